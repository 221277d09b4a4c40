"""Import jobs: a folder tree, a ZIP file or a browser upload becomes Asset rows.

One bad file never stops an import: it is named in job.errors and the rest goes on. Files are
stored once per client (by sha256), and a duplicate is named with the asset it repeats; labels
from folder names, or from a ZIP export's labels.csv, are folder_labels' and manifest's
business. A ZIP is read member by member, never extracted, so an entry's name can't place a file
anywhere. Counters reach the database about once a second, which is what the job page polls.
"""
from __future__ import annotations

import logging
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Iterable

from django.core.files import File
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.utils import timezone

from ..models import Asset, Client, ImportJob, JobState, Taxonomy
from ..permissions import real_user
from . import images
from .folder_labels import FolderLabels
from .import_sources import (READ_ERRORS, UPLOAD, Entry, SourceError, Uploaded, clean_stale_staging, display_name,
                             scan, stage_files, staging_dir)
from .manifest import Manifests

__all__ = ["UPLOAD", "create_job", "enqueue", "import_paths", "report", "run_job", "stage_upload", "staging_dir",
           "summary"]

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
MAX_REPORTED = 1000  # job.errors entries kept; the rest are counted in one last line
# Duplicates named one by one; past that one line counts them, so re-importing a library of
# 100,000 files does not fill the report (and MAX_REPORTED) with 'same bytes' lines.
MAX_DUPLICATES_NAMED = 200
Progress = Callable[[int, int], None]


def create_job(client: Client, source: str, user=None, labels_taxonomy: Taxonomy | None = None) -> ImportJob:
    if labels_taxonomy is not None and labels_taxonomy.client_id != client.pk:
        raise ValueError("labels_taxonomy: belongs to another client")
    return ImportJob.objects.create(
        client=client,
        source=str(source),
        created_by=real_user(user),
        labels_from_folders=labels_taxonomy,
    )


def import_paths(client: Client, source, user=None, labels_taxonomy: Taxonomy | None = None,
                 progress: Progress | None = None) -> ImportJob:
    """Create and run an import right here (management command, tests, demo data)."""
    job = create_job(client, str(source), user=user, labels_taxonomy=labels_taxonomy)
    return run_job(job.pk, progress=progress)


def stage_upload(client: Client, files: Iterable[tuple[Uploaded, str]], user=None,
                 labels_taxonomy: Taxonomy | None = None) -> ImportJob:
    """Stage browser uploads and create their job. The job row commits only once all its files
    are in place, so the sweep can never pick up a half-staged upload."""
    clean_stale_staging()
    folder, problems = stage_files(files)
    try:
        with transaction.atomic():
            job = create_job(client, UPLOAD, user=user, labels_taxonomy=labels_taxonomy)
            if problems:  # files that could not be staged are the first lines of the job's report
                job.errors = [report("failed", name, message) for name, message in problems]
                job.n_failed = job.total = job.processed = len(problems)
                job.save(update_fields=["errors", "n_failed", "total", "processed"])
            target = staging_dir(job)
            if target.exists():
                # The id is new in this database, so the folder belongs to no job: it is left
                # over from an earlier database whose ids started again at 1.
                shutil.rmtree(target)
            folder.rename(target)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return job


def enqueue(job: ImportJob) -> bool:
    """Hand the job to a worker. False when the broker is unreachable: the job stays queued and
    the periodic sweep (labeling.tasks.sweep) enqueues it again."""
    from .. import tasks  # tasks import services; import here to keep the graph acyclic

    return tasks.send(tasks.run_import, job.pk, f"import {job.pk} (left to the sweep)")


def run_job(job_id: int, progress: Progress | None = None) -> ImportJob:
    """Run a queued job. Safe to call twice: only the caller whose UPDATE moves it from queued
    to running does the work (a redelivered Celery message returns at once)."""
    now = timezone.now()
    claimed = ImportJob.objects.filter(pk=job_id, state=JobState.QUEUED).update(
        state=JobState.RUNNING, started=now, heartbeat=now
    )
    job = ImportJob.objects.select_related("client", "labels_from_folders", "created_by").get(pk=job_id)
    if not claimed:
        return job
    source = staging_dir(job) if job.source == UPLOAD else Path(job.source).expanduser()
    importer = _Importer(job, progress)
    state, error, crash = JobState.SUCCEEDED, "", None
    try:
        if job.source == UPLOAD and not source.is_dir():
            raise SourceError(f"uploaded files not found in {source} (web and workers must share TAGLOOP_VAR)")
        with ExitStack() as stack:
            importer.run(scan(source, stack))
    except SourceError as exc:
        state, error = JobState.FAILED, str(exc)
    except Exception as exc:
        log.exception("import %s failed", job.pk)
        state, error, crash = JobState.FAILED, f"import stopped by an internal error: {exc!r}", exc
    finally:
        if job.source == UPLOAD:
            shutil.rmtree(source, ignore_errors=True)
    # Also after a failure: the assets stored before it are in the library, and nothing else
    # embeds unlabeled assets (a re-import only finds them as duplicates).
    importer.after_import()
    importer.finish(state, display_name(error))
    if crash is not None:
        raise crash
    return job


def report(kind: str, file: str, message: str) -> dict:
    """One job.errors line. kind: failed (a bad file), skipped (not an image), duplicate (bytes
    already stored), note."""
    # PostgreSQL's JSON takes neither lone surrogates nor NUL: one odd name must not stop the
    # flush of every counter (the job would look hung until the sweep fails it).
    return {"file": display_name(file).replace("\0", ""), "error": display_name(message).replace("\0", ""),
            "kind": kind}


class _Importer:
    def __init__(self, job: ImportJob, progress: Progress | None) -> None:
        self.job = job
        self.progress = progress
        self.manifests = Manifests(self.note, beat=self.flush)
        self.folders = FolderLabels(job, self.note, self.manifests) if job.labels_from_folders else None
        self.created_ids: list[int] = []
        self.n_dropped = 0
        self.last_flush = 0.0
        job.errors = list(job.errors or [])  # staging problems of an upload come first

    # counters and report
    def add(self, kind: str, file: str, message: str) -> None:
        if kind == "failed":
            self.job.n_failed += 1
        if len(self.job.errors) < MAX_REPORTED:
            self.job.errors.append(report(kind, file, message))
        else:
            self.n_dropped += 1

    def note(self, file: str, message: str) -> None:
        self.add("note", file, message)

    def note_duplicate(self, entry: Entry, asset: Asset | None) -> None:
        if self.job.n_duplicates > MAX_DUPLICATES_NAMED:  # counted in reported()
            return
        what = f"asset #{asset.pk} ({asset.original_name})" if asset else "an image another import stored meanwhile"
        self.add("duplicate", entry.name, f"same bytes as {what}, not stored again")

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_flush < FLUSH_SECONDS:
            return
        self.last_flush = now
        if self.folders:
            self.folders.flush()
        j = self.job
        ImportJob.objects.filter(pk=j.pk).update(
            total=j.total, processed=j.processed, n_created=j.n_created, n_duplicates=j.n_duplicates,
            n_failed=j.n_failed, n_labeled=j.n_labeled, errors=self.reported(), heartbeat=timezone.now(),
        )

    def reported(self) -> list[dict]:
        more = [report("note", "…", f"{self.n_dropped} more lines not kept")] if self.n_dropped else []
        unnamed = self.job.n_duplicates - MAX_DUPLICATES_NAMED
        if unnamed > 0:
            more.insert(0, report("duplicate", "…", f"{unnamed} more files with the same bytes as an image already "
                                                    "stored, not stored again (not named one by one)"))
        return self.job.errors + more

    def finish(self, state: str, error: str = "") -> None:
        self.flush(force=True)
        j = self.job
        j.state, j.error, j.finished = state, error, timezone.now()
        j.errors = self.reported()
        ImportJob.objects.filter(pk=j.pk).update(state=state, error=error, finished=j.finished)

    # the work
    def run(self, entries: list[Entry]) -> None:
        with self.manifests:
            # First: a ZIP export's manifest comes last in the ZIP, and decides the labels of the
            # files before it. Ours, it is not one of the files counted and reported.
            entries = self.manifests.take(entries, apply=self.folders is not None)
            self.job.total = self.job.processed + len(entries)  # processed: files that failed staging
            self.flush(force=True)
            for entry in entries:
                if entry.refusal:
                    self.add(entry.kind, entry.name, entry.refusal)
                else:
                    self.import_one(entry)
                self.job.processed += 1
                if self.progress:
                    self.progress(self.job.processed, self.job.total)
                self.flush()
        self.flush(force=True)

    def import_one(self, entry: Entry) -> None:
        try:
            with entry.open() as src:
                spooled = images.spool(src)
        except images.ImageError as exc:
            self.add("failed", entry.name, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - whatever a decompressor raises, it is one bad file
            if not isinstance(exc, READ_ERRORS):  # unexpected: keep the trace for a fix
                log.exception("import %s: reading %s", self.job.pk, entry.name)
            self.add("failed", entry.name, f"can't be read ({type(exc).__name__}: {exc})")
            return
        with spooled.file:
            asset, created = self.existing(spooled.sha256), False
            if asset is None:
                try:
                    asset, created = self.store(entry, spooled)
                except images.ImageError as exc:
                    self.add("failed", entry.name, str(exc))
                    return
                except Exception as exc:  # one odd file must not end the import; the log has the trace
                    log.exception("import %s: %s", self.job.pk, entry.name)
                    self.add("failed", entry.name, f"could not be processed ({type(exc).__name__}: {exc})")
                    return
        if created:
            if self.folders:
                self.folders.label_new(entry, asset)
            return
        self.job.n_duplicates += 1
        asset = asset or self.existing(spooled.sha256)  # None: stored by a concurrent import, since deleted
        self.note_duplicate(entry, asset)
        if asset is not None and self.folders:
            self.folders.label_seen(entry, asset)

    def existing(self, sha256: str) -> Asset | None:
        return Asset.objects.filter(client=self.job.client, sha256=sha256).first()

    def store(self, entry: Entry, spooled: images.Spooled) -> tuple[Asset | None, bool]:
        info = images.decode(spooled.file)
        asset = Asset(
            client=self.job.client, import_job=self.job, original_name=entry.name[:500], sha256=spooled.sha256,
            byte_size=spooled.byte_size, width=info.width, height=info.height, format=info.format,
            phash=info.phash,
        )
        spooled.file.seek(0)
        try:
            # Original bytes as uploaded; the storage name comes from sha256 (see asset_upload_to).
            asset.file.save("original" + info.extension, File(spooled.file), save=False)
            asset.thumbnail.save("thumb.jpg", ContentFile(info.thumbnail), save=False)
            with transaction.atomic():
                asset.save()
        except BaseException as exc:
            # No row points at these files: left on disk, a later import of the same bytes would
            # be stored under a renamed file. (FieldFile.delete does nothing for an unsaved one.)
            asset.file.delete(save=False)
            asset.thumbnail.delete(save=False)
            if isinstance(exc, IntegrityError):  # the same bytes, imported by another job meanwhile
                return None, False
            raise
        self.created_ids.append(asset.pk)
        self.job.n_created += 1
        return asset, True

    def after_import(self) -> None:
        """Embed and score the new assets so they show up ranked in the review queue."""
        if not self.created_ids:
            return
        from . import suggesting, vectors

        try:
            beat = lambda done, total: ImportJob.objects.filter(pk=self.job.pk).update(heartbeat=timezone.now())
            result = vectors.embed_assets(self.created_ids, progress=beat) or {}
            suggesting.score_new_assets(self.job.client_id, self.created_ids)
        except Exception as exc:  # the assets are in; the next training embeds the labeled ones
            log.exception("import %s: embedding/scoring failed", self.job.pk)
            self.add("note", "", f"images imported, but embedding or scoring failed: {exc}")
            return
        failed = result.get("failed") or {}
        names = dict(Asset.objects.filter(pk__in=list(failed)).values_list("pk", "original_name"))
        for asset_id, message in failed.items():
            self.add("note", names.get(asset_id, f"asset {asset_id}"), f"imported, but not embedded: {message}")


def summary(job: ImportJob) -> dict:
    """What the job page, its JSON endpoint and the management command show."""
    return {
        "id": job.pk,
        "state": job.state,
        "done": job.state in (JobState.SUCCEEDED, JobState.FAILED),
        "source": job.source,
        "total": job.total,
        "processed": job.processed,
        "percent": round(100 * job.progress),
        "created": job.n_created,
        "duplicates": job.n_duplicates,
        "failed": job.n_failed,
        "labeled": job.n_labeled,
        "error": job.error,
        "errors": job.errors,
        "started": job.started.isoformat() if job.started else None,
        "finished": job.finished.isoformat() if job.finished else None,
    }
