"""Downloads from the datasets' official sources: resumable, checksummed, clear when offline.

One function for every dataset, so that every downloader resumes a partial file (HTTP Range), verifies
its checksum before the file is used, and fails with the same one-line message on a machine without
internet access.
"""
from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from trainables.errors import DataError

TIMEOUT_S = 60


def file_hash(path: Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: Path, checksum: str | None = None, algorithm: str = "md5") -> Path:
    """Download `url` to `dest` (resuming a `.part` file), verify `checksum`, return `dest`.

    An existing `dest` whose checksum matches is kept without network access.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and (checksum is None or file_hash(dest, algorithm) == checksum):
        return dest
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "dpl-study"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            mode = "ab" if offset and response.status == 206 else "wb"
            with open(part, mode) as out:
                shutil.copyfileobj(response, out, length=1 << 20)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DataError(
            f"cannot download {url} ({getattr(exc, 'reason', exc)}); this machine may be offline: download it "
            f"elsewhere and place it at {dest}, or use `dpl data synth` for synthetic data"
        ) from exc
    if checksum is not None and (got := file_hash(part, algorithm)) != checksum:
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: {algorithm} {got} does not match the official {checksum}; the download was deleted, retry")
    part.rename(dest)
    return dest


def extract(archive: Path, into: Path) -> Path:
    """Unpack a .zip/.tar(.gz) refusing members that would land outside `into` (path traversal)."""
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    root = into.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if not (root / name).resolve().is_relative_to(root):
                    raise DataError(f"{archive}: member {name} would extract outside {into}; refusing")
            z.extractall(into)
    else:
        with tarfile.open(archive) as t:  # detects gzip/bz2/xz itself
            t.extractall(into, filter="data")
    return into
