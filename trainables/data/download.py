"""Downloads from the datasets' official sources: resumable, checksummed, clear when offline.

One function for every dataset, so that every downloader resumes a partial file (HTTP Range), verifies
its checksum before the file is used, and fails with the same one-line message on a machine without
internet access.
"""
from __future__ import annotations

import gzip
import hashlib
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

from trainables.errors import DataError
from trainables.progress import Progress

TIMEOUT_S = 60


def file_hash(path: Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: Per-directory manifest in `sha256sum` format. Sources that publish no checksum (BAPPS, Massachusetts
#: Roads, COCO, the SR test sets) are verified against it: the first download records its hash (trust on
#: first use), every later use re-checks it, and a lab can pin the hashes up front by copying a manifest
#: made on a trusted machine next to the data (`sha256sum -c SHA256SUMS` checks it by hand).
MANIFEST = "SHA256SUMS"


def recorded_sha256(dest: Path) -> str | None:
    manifest = Path(dest).parent / MANIFEST
    if not manifest.is_file():
        return None
    for line in manifest.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if name.lstrip("*") == Path(dest).name:
            return digest.lower()
    return None


def _record_sha256(dest: Path, digest: str) -> None:
    manifest = dest.parent / MANIFEST
    lines = manifest.read_text().splitlines() if manifest.is_file() else []
    lines = [ln for ln in lines if ln.strip().partition("  ")[2].lstrip("*") != dest.name]
    manifest.write_text("\n".join([*lines, f"{digest}  {dest.name}"]) + "\n")


def _mismatch(path: Path, checksum: str | None, algorithm: str, pinned: str | None) -> str | None:
    """Why `path` fails its checks (official checksum, then the manifest's sha256), or None if it passes."""
    if checksum is not None and (got := file_hash(path, algorithm)) != checksum:
        return f"{algorithm} {got} does not match the official {checksum}"
    if pinned is not None and (got := file_hash(path, "sha256")) != pinned:
        return (f"sha256 {got} does not match {pinned} recorded in {path.parent / MANIFEST} (first download or "
                f"pinned by you); if the source legitimately changed, delete that line")
    return None


def fetch(url: str, dest: Path, checksum: str | None = None, algorithm: str = "md5") -> Path:
    """Download `url` to `dest` (resuming a `.part` file), verify it, record its sha256, return `dest`.

    An existing `dest` that passes its checks is kept without network access; one that fails them is
    downloaded again.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    pinned = recorded_sha256(dest)
    if dest.is_file() and _mismatch(dest, checksum, algorithm, pinned) is None:
        if pinned is None:
            _record_sha256(dest, file_hash(dest, "sha256"))
        return dest
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "dpl-study"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            resumed = bool(offset and response.status == 206)
            with open(part, "ab" if resumed else "wb") as out:
                _copy_with_progress(response, out, dest.name, offset if resumed else 0)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DataError(
            f"cannot download {url} ({getattr(exc, 'reason', exc)}); this machine may be offline: download it "
            f"elsewhere and place it at {dest}, or use `dpl data synth` for synthetic data"
        ) from exc
    if (why := _mismatch(part, checksum, algorithm, pinned)) is not None:
        part.unlink(missing_ok=True)
        raise DataError(f"{url}: {why}; the download was deleted, retry")
    part.rename(dest)
    _record_sha256(dest, file_hash(dest, "sha256"))
    return dest


def _copy_with_progress(response: Any, out: BinaryIO, name: str, offset: int) -> None:
    """Copy the response body to `out` in 1 MiB chunks, showing a progress bar on stderr (`Progress`:
    a bar on a terminal, a line every 10 s in a log). `offset`: bytes already there from a resumed part."""
    length = response.headers.get("Content-Length") if getattr(response, "headers", None) else None
    total = offset + int(length) if length and str(length).isdigit() else 0
    done = offset
    with Progress(f"download {name}", unit="B") as bar:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            out.write(chunk)
            done += len(chunk)
            bar(done, total)


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
        try:
            with tarfile.open(archive) as t:  # detects gzip/bz2/xz itself
                t.extractall(into, filter="data")
        except tarfile.FilterError as exc:
            raise DataError(f"{archive}: {exc}; refusing (the archive is not what the source publishes)") from exc
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(f"{archive} is not a readable archive ({exc}); delete it to download it again") from exc
    return into
