"""What an import makes of a manifest it can't follow everywhere: bad rows are named by their
line and the other files import, a row the taxonomy can't take leaves its image unlabeled and
says why, and a labels.csv that is not a tagloop manifest is just a skipped file."""
from __future__ import annotations

import csv
import io
import shutil
import zipfile
from pathlib import Path

import pytest

from labeling.models import Label, Tag
from labeling.services import importing, manifest
from tests.test_import_manifest import fresh_taxonomy, lines, looks, paths_by_sha, quiet  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db

HEADER = "file_in_zip,asset_id,original_name,tags,tag_ids\r\n"


def with_manifest(archive: Path, body: bytes, dest: Path) -> Path:
    """A copy of the exported ZIP whose labels.csv is ``body``."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(dest, "w") as out:
        for info in src.infolist():
            if info.filename != "labels.csv":
                out.writestr(info, src.read(info))
        out.writestr("labels.csv", body)
    return dest


def read_bytes(archive: Path, name: str) -> bytes:
    with zipfile.ZipFile(archive) as zf:
        return zf.read(name)


def manifest_rows(archive: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(read_bytes(archive, "labels.csv").decode())))[1:]


def csv_line(cells: list[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerow(cells)
    return out.getvalue().encode()


def test_bad_manifest_rows_are_named_by_line_and_the_other_files_import(world, looks, tmp_path):
    rows = manifest_rows(looks.archive)
    vehicle_only = next(r for r in rows if r[1] == str(looks.assets[1].pk))
    lone_cs = next(r for r in rows if r[1] == str(looks.assets[4].pk))
    body = [HEADER.encode()]  # line 1
    for r in rows:
        if r is vehicle_only:  # not CSV: the file falls back to its folder, 'vehicle'
            body.append(f'"{r[0]}"x,{r[1]},{r[2]},vehicle,\r\n'.encode())
        elif r is lone_cs:  # one tag name the taxonomy refuses: the file is left unlabeled
            body.append(csv_line([r[0], r[1], r[2], "C#|..", r[4]]))
        else:
            body.append(csv_line(r))
    bad = {  # line number: what the report says of it
        len(body) + 1: "'look/red/999-gone.jpg' is not in this import; row ignored",
        len(body) + 2: "5 cells expected, 3 found; row ignored",
        len(body) + 3: f"longer than {manifest.MAX_LINE_BYTES:,} bytes; row ignored",
        len(body) + 4: "not UTF-8 text; row ignored",
        len(body) + 5: f"'{rows[0][0]}' listed again (first on line 2); row ignored",
    }
    body += [csv_line(["look/red/999-gone.jpg", "999", "gone.jpg", "red", "1"]), b"a,b,c\r\n",
             csv_line(["look/red/x.jpg", "1", "x" * 150_000, "red", "1"]), b"look/red/\xff.jpg,1,x,red,1\r\n",
             csv_line(rows[0][:3] + ["C++", ""])]
    archive = with_manifest(looks.archive, b"".join(body), tmp_path / "edited.zip")
    fresh = fresh_taxonomy(world.globex)

    job = importing.import_paths(world.globex, archive, labels_taxonomy=fresh)

    assert job.state == "succeeded" and (job.n_created, job.n_failed, job.n_labeled) == (5, 0, 4), job.errors
    notes = lines(job)
    broken = 1 + rows.index(vehicle_only) + 1
    assert notes[0].startswith(f"labels.csv: line {broken}: not valid CSV (")
    assert sorted(n for n in notes if n.startswith("labels.csv: line ") and "valid CSV" not in n) == sorted(
        f"labels.csv: line {line}: {text}" for line, text in bad.items())
    assert (f"{lone_cs[0]}: not labeled: tag '..' (labels.csv line {1 + rows.index(lone_cs) + 1}) can't be made: "
            "a tag name needs a letter or digit") in notes
    by_sha = paths_by_sha(world.globex, fresh)
    assert by_sha[looks.assets[1].sha256] == ["vehicle"], "its folder's tag"
    assert looks.assets[4].sha256 not in by_sha and not fresh.tags.filter(name="..").exists()
    assert by_sha[looks.assets[0].sha256] == ["red", "vehicle / car"], "the rest as the manifest says"


def test_a_single_label_taxonomy_takes_the_rows_with_exactly_one_tag(world, looks):
    fresh = fresh_taxonomy(world.globex, multi=False)

    job = importing.import_paths(world.globex, looks.archive, labels_taxonomy=fresh)

    assert (job.n_created, job.n_labeled) == (5, 2), job.errors
    assert sorted(paths_by_sha(world.globex, fresh).values()) == [["C#"], ["vehicle"]]
    notes = "\n".join(lines(job))
    two, none = looks.assets[0], looks.assets[2]
    assert (f"look/red/{two.pk}-{looks.photos[0].name}: not labeled: labels.csv (line 3) gives it 'vehicle / car', "
            "'red', and taxonomy 'look' takes exactly one tag per image") in notes
    assert (f"look/(no tags)/{none.pk}-{looks.photos[2].name}: not labeled: labels.csv (line 5) gives it no tag, "
            "and taxonomy 'look' takes exactly one tag per image") in notes
    assert not fresh.tags.filter(name="car").exists(), "no tag made for rows not taken"


def test_an_image_whose_row_names_a_retired_tag_is_left_unlabeled_and_a_namesake_elsewhere_is_left_alone(
        world, looks):
    fresh = fresh_taxonomy(world.globex)
    car = Tag.objects.create(taxonomy=fresh, name="car")  # here not under vehicle: another tag
    Tag.objects.create(taxonomy=fresh, name="AC/DC", retired=True)

    job = importing.import_paths(world.globex, looks.archive, labels_taxonomy=fresh)

    by_sha = paths_by_sha(world.globex, fresh)
    assert looks.assets[3].sha256 not in by_sha
    assert by_sha[looks.assets[0].sha256] == ["red", "vehicle / car"], "made under a new 'vehicle'"
    assert by_sha[looks.assets[4].sha256] == ["C#"] and job.n_labeled == 4
    car.refresh_from_db()
    assert car.parent is None and not car.labels.exists()
    notes = lines(job)
    assert sum("not labeled: tag 'AC/DC' is retired" in n for n in notes) == 3, "each of its 3 files"


def test_without_its_manifest_the_zip_falls_back_to_folder_names_and_its_no_tag_folder(world, looks, tmp_path):
    archive = with_manifest(looks.archive, b"", tmp_path / "bare.zip")  # an empty labels.csv: not a manifest
    fresh = fresh_taxonomy(world.globex)

    job = importing.import_paths(world.globex, archive, labels_taxonomy=fresh)

    by_sha = paths_by_sha(world.globex, fresh)
    assert by_sha[looks.assets[2].sha256] == [], "'(no tags)' is no tag, not a tag of that name"
    assert by_sha[looks.assets[0].sha256] == ["red", "vehicle__car"], "a folder can't spell the tree"
    assert not fresh.tags.filter(name="(no tags)").exists() and job.n_labeled == 5


def test_a_damaged_manifest_is_a_failed_file_and_the_images_get_their_folders_tags(world, looks, tmp_path):
    body = read_bytes(looks.archive, "labels.csv")
    data = with_manifest(looks.archive, body, tmp_path / "stored.zip").read_bytes()  # stored, not deflated
    at = data.index(body) + len(body) - 10
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1:])  # its CRC no longer matches
    fresh = fresh_taxonomy(world.globex)

    job = importing.import_paths(world.globex, damaged, labels_taxonomy=fresh)

    assert job.state == "succeeded" and (job.n_created, job.n_failed, job.n_labeled) == (5, 1, 5), job.errors
    assert "labels.csv: can't be read (BadZipFile: Bad CRC-32 for file 'labels.csv')" in lines(job, "failed")
    assert paths_by_sha(world.globex, fresh)[looks.assets[1].sha256] == ["vehicle"]


def test_a_users_own_labels_csv_is_a_skipped_file_and_folders_give_the_labels(world, shoe_paths, tmp_path):
    src = tmp_path / "sorted"
    for folder, photo in (("nike", shoe_paths["test"]["nike"][0]), ("adidas", shoe_paths["test"]["adidas"][0])):
        (src / folder).mkdir(parents=True)
        shutil.copy(photo, src / folder / "shot.jpg")
    (src / "labels.csv").write_text("file,label\nnike/shot.jpg,adidas\n")
    (src / "backup").mkdir()  # a tagloop manifest, but not at the root: someone's file too
    (src / "backup" / "labels.csv").write_text(HEADER + "nike/shot.jpg,1,shot.jpg,converse,1\r\n")

    job = importing.import_paths(world.acme, src, labels_taxonomy=world.brand)

    assert job.n_labeled == 2 and job.total == 4
    assert sorted(lines(job, "skipped")) == [f"{name}: not an image type ('.csv' files are not imported)"
                                             for name in ("backup/labels.csv", "labels.csv")]
    assert {lab.asset.original_name: [t.name for t in lab.tags.all()]
            for lab in Label.objects.filter(taxonomy=world.brand)} == {"nike/shot.jpg": ["nike"],
                                                                        "adidas/shot.jpg": ["adidas"]}


def test_past_the_limit_bad_rows_are_counted_in_one_line(world, tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "MAX_ROWS_NAMED", 2)
    (tmp_path / "src").mkdir()
    rows = "".join(f"look/red/{i}-gone.jpg,{i},gone.jpg,red,1\r\n" for i in range(5))
    (tmp_path / "src" / "labels.csv").write_text(HEADER + rows)

    job = importing.import_paths(world.acme, tmp_path / "src", labels_taxonomy=world.brand)

    assert job.state == "succeeded" and job.total == 0
    assert lines(job) == ["labels.csv: line 2: 'look/red/0-gone.jpg' is not in this import; row ignored",
                          "labels.csv: line 3: 'look/red/1-gone.jpg' is not in this import; row ignored",
                          "…: 3 more rows of labels.csv ignored (not named one by one)"]
