"""python manage.py import_assets CLIENT_SLUG PATH [--labels-from-folders TAXONOMY] [--user USERNAME]

Imports a folder tree or a ZIP in this process, with a progress bar and a final report.
Exit code 0 even when some files were bad (they are listed); non-zero when the source itself
can't be read.
"""
from __future__ import annotations

import shutil
import sys

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from labeling.models import Client, JobState, Taxonomy
from labeling.services import importing


class Command(BaseCommand):
    help = "Import images from a folder tree or a ZIP file into a client."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("client", help="client slug")
        parser.add_argument("path", help="folder (searched recursively) or .zip file")
        parser.add_argument("--labels-from-folders", metavar="TAXONOMY",
                            help="label each image with its folder name, as a tag of this taxonomy")
        parser.add_argument("--user", metavar="USERNAME", help="recorded as the importer and labeler")

    def handle(self, *args, client: str, path: str, labels_from_folders: str | None, user: str | None, **options):
        target = Client.objects.filter(slug=client).first()
        if target is None:
            raise CommandError(f"no client with slug '{client}'")
        taxonomy = None
        if labels_from_folders:
            taxonomy = Taxonomy.objects.filter(client=target, name=labels_from_folders).first()
            if taxonomy is None:
                names = ", ".join(Taxonomy.objects.filter(client=target).values_list("name", flat=True)) or "none"
                raise CommandError(f"client '{client}' has no taxonomy '{labels_from_folders}' (it has: {names})")
        importer = None
        if user:
            importer = get_user_model().objects.filter(username=user).first()
            if importer is None:
                raise CommandError(f"no user '{user}'")

        # tqdm writes to the real stderr: Django's OutputWrapper would end every \r redraw with a
        # newline. disable=None: no bar when stderr is not a terminal (cron, CI logs). Size: some
        # ptys (ssh -t, script) report 0x0, and tqdm then draws nothing; shutil falls back to 80x24.
        cols, rows = shutil.get_terminal_size()
        with tqdm(unit="file", desc="import", file=sys.stderr, disable=None, ncols=cols, nrows=rows) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            job = importing.import_paths(target, path, user=importer, labels_taxonomy=taxonomy, progress=progress)

        for e in job.errors:
            self.stdout.write(self.printable(f"  {e.get('kind', 'failed'):7}  {e['file']}: {e['error']}"))
        self.stdout.write(
            f"import #{job.pk} {job.state}: {job.n_created} created, {job.n_duplicates} duplicates, "
            f"{job.n_failed} failed, {job.n_labeled} labeled (of {job.total} files)"
        )
        if job.state != JobState.SUCCEEDED:
            raise CommandError(self.printable(f"import #{job.pk} failed: {job.error}"))

    def printable(self, text: str) -> str:
        """``text`` as this stdout can write it: a file name the terminal's encoding lacks (an ASCII
        locale, a cron log) becomes '?' instead of ending the command before its summary line."""
        encoding = getattr(self.stdout._out, "encoding", None) or "utf-8"
        return text.encode(encoding, "replace").decode(encoding)
