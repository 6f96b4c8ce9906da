"""Downloads: every file verified before use, by the official checksum or by the recorded/pinned sha256.

Served from `file://` URLs (urllib treats them like any other), so the real `fetch` runs end to end offline;
`sha256sum -c` is the independent check that the manifest is what it claims to be.
"""
from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from trainables.data.download import MANIFEST, extract, fetch
from trainables.errors import DataError


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "upstream" / "archive.tar.gz"
    src.parent.mkdir()
    src.write_bytes(b"official bytes " * 1000)
    return src


def test_first_download_records_a_sha256sum_manifest(tmp_path, source) -> None:
    dest = fetch(source.as_uri(), tmp_path / "data" / "archive.tar.gz")
    assert dest.read_bytes() == source.read_bytes() and not dest.with_name("archive.tar.gz.part").exists()
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", MANIFEST], cwd=dest.parent, capture_output=True, text=True)
        assert check.returncode == 0 and "archive.tar.gz: OK" in check.stdout
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert (dest.parent / MANIFEST).read_text() == f"{digest}  archive.tar.gz\n"  # sha256sum's own format
    source.unlink()  # offline now: the verified copy is used without the network
    assert fetch(source.as_uri(), dest) == dest


def test_changed_source_is_refused_and_nothing_kept(tmp_path, source) -> None:
    dest = fetch(source.as_uri(), tmp_path / "data" / "archive.tar.gz")
    dest.unlink()
    source.write_bytes(b"tampered")
    with pytest.raises(DataError, match=r"sha256 .* does not match .* recorded in .*SHA256SUMS"):
        fetch(source.as_uri(), dest)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_locally_corrupted_file_is_downloaded_again(tmp_path, source) -> None:
    dest = fetch(source.as_uri(), tmp_path / "data" / "archive.tar.gz")
    dest.write_bytes(b"bit rot")
    assert fetch(source.as_uri(), dest).read_bytes() == source.read_bytes()


def test_pinned_manifest_and_official_checksum_are_enforced(tmp_path, source) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / MANIFEST).write_text(f"{'0' * 64}  archive.tar.gz\n")  # pinned by the lab before downloading
    with pytest.raises(DataError, match="recorded in"):
        fetch(source.as_uri(), data / "archive.tar.gz")
    with pytest.raises(DataError, match="does not match the official"):
        fetch(source.as_uri(), tmp_path / "other" / "archive.tar.gz", checksum="0" * 32)
    good = hashlib.md5(source.read_bytes()).hexdigest()
    assert fetch(source.as_uri(), tmp_path / "other" / "archive.tar.gz", checksum=good).is_file()


def test_offline_error_says_where_to_put_the_file(tmp_path) -> None:
    with pytest.raises(DataError, match=r"offline: download it elsewhere and place it at .*x\.zip"):
        fetch((tmp_path / "nowhere" / "x.zip").as_uri(), tmp_path / "data" / "x.zip")


def test_extract_refuses_members_outside_the_target(tmp_path) -> None:
    evil_zip = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil_zip, "w") as z:
        z.writestr("../escaped.txt", "x")
    with pytest.raises(DataError, match="outside"):
        extract(evil_zip, tmp_path / "into")
    evil_tar = tmp_path / "evil.tar.gz"
    with tarfile.open(evil_tar, "w:gz") as t:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DataError, match="outside the destination"):
        extract(evil_tar, tmp_path / "into")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(evil_tar.read_bytes()[:20])
    with pytest.raises(DataError, match="not a readable archive.*delete it"):
        extract(truncated, tmp_path / "into")
    assert not (tmp_path / "escaped.txt").exists()
