"""Synthetic data made where it is needed: a node without the driver's copy regenerates it and proves
it got the same bytes.

Generation is seeded and writes no timestamps or paths into the files, so the same (generator, seed,
size) gives the same bytes on every node with the same library versions. The driver records
`tree_sha256` of its copy in the plan; `local_copy` regenerates into a node-local cache and refuses (one
line) a copy whose hash differs, instead of training on other data than the driver planned.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from trainables.config import SYNTHETIC_MARKER
from trainables.errors import DataError


def tree_sha256(root: Path) -> str:
    """sha256 over every file under `root`: sorted relative paths, each with the sha256 of its bytes."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def cache_dir() -> Path:
    """This node's cache (`$DPL_CACHE_DIR`, else `~/.cache/dpl`): where regenerated data goes."""
    return Path(os.environ.get("DPL_CACHE_DIR", Path.home() / ".cache" / "dpl"))


def local_copy(dataset: str, generator: str, seed: int, size: str, sha256: str, cache: Path | None = None) -> Path:
    """A node-local copy of a synthetic dataset whose files hash to `sha256`, generated if missing.

    Generated into a temporary sibling and renamed into place once its hash matched, so concurrent trials
    on one node never read a half-written copy, and a copy that exists was already verified.
    """
    from trainables.data import dataset_module

    dest = Path(cache or cache_dir()) / "synthetic" / f"{dataset}-{sha256[:16]}"
    if (dest / SYNTHETIC_MARKER).is_file():
        return dest
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset_module(generator).synthesize(tmp, seed=seed, size=size)
    got = tree_sha256(tmp)
    if got != sha256:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"synthetic {dataset} data generated on this node (sha256 {got[:16]}) differs from the "
                        f"driver's ({sha256[:16]}): install the same package versions on every node, or put "
                        f"the data in a data root every node reads")
    try:
        os.rename(tmp, dest)
    except OSError:  # another trial on this node got there first: its copy is verified too
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
