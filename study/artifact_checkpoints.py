"""Trial checkpoints kept in the trial's MLflow run, so a cluster needs no shared filesystem.

Mode `mlflow` (see `resolve_mode`): every checkpoint goes to the run's artifacts under a fresh version
path `checkpoint/vNNNNNN/`, and only once that upload has completed does the run tag `dpl.checkpoint`
(`POINTER_TAG`) move to it; older versions are deleted afterwards (where the artifact store can delete).
A kill mid-upload therefore leaves the tag on the previous, complete version, and a resumed trial, on
whatever node, downloads exactly the version the tag names: it never sees a partial checkpoint. A partial
upload is an unreferenced version that the next successful upload deletes.

Mode `shared`: the study directory is on every node (`<study>/checkpoints/<key>/`, swapped by
`trainables.reporting.store_checkpoint`); the run gets a copy under `checkpoint/` when the trial ends.

A study may change mode between launches (`--checkpoints`, or `auto` with another tracking URI): the driver
first brings every unfinished trial's checkpoint to where the new mode keeps it (`carry_over`), so an
interrupted trial resumes instead of restarting from scratch.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trainables.errors import UserError
from trainables.reporting import discard_checkpoint, newest_checkpoint, store_checkpoint

#: Run tag naming the artifact path of the trial's newest complete checkpoint, e.g. `checkpoint/v000003`.
POINTER_TAG = "dpl.checkpoint"
#: Artifact folder of the versions (the same folder the shared mode copies the final checkpoint to).
ARTIFACT_ROOT = "checkpoint"
MODES = ("auto", "shared", "mlflow")
_VERSION = re.compile(r"v(\d{6,})")


def resolve_mode(requested: str | None, tracking_uri: str) -> str:
    """`shared` or `mlflow`. `auto` (the default) picks `mlflow` for an http(s) tracking server, whose
    artifact store every node reaches, and `shared` otherwise (a file or SQLite store is itself on a
    filesystem the nodes must share, so the checkpoints may as well be there too)."""
    mode = requested or "auto"
    if mode not in MODES:
        raise UserError(f"--checkpoints {mode!r}: use one of {', '.join(MODES)}")
    if mode == "auto":
        return "mlflow" if tracking_uri.lower().startswith(("http://", "https://")) else "shared"
    return mode


def version_path(n: int) -> str:
    return f"{ARTIFACT_ROOT}/v{n:06d}"


def _version_of(path: str | None) -> int | None:
    m = _VERSION.fullmatch(Path(path).name) if path else None
    return int(m.group(1)) if m else None


def _listed_versions(client: Any, run_id: str) -> list[tuple[str, int]]:
    """(artifact path, number) of every version folder in the run, complete or not."""
    found = []
    for info in client.list_artifacts(run_id, ARTIFACT_ROOT):
        n = _version_of(info.path)
        if info.is_dir and n is not None:
            found.append((info.path, n))
    return found


def pointer(client: Any, run_id: str) -> str | None:
    """The artifact path of the newest complete checkpoint, or None (nothing uploaded yet)."""
    return client.get_run(run_id).data.tags.get(POINTER_TAG)


def upload(client: Any, run_id: str, src: Path) -> str:
    """Upload the checkpoint directory `src` as a new version, then point the run's tag at it, then
    delete the versions before it. Returns the new version's artifact path.

    The version number is one past every version present (also a partial upload of an attempt that was
    killed), so a new upload never lands in a folder that already holds files.
    """
    listed = _listed_versions(client, run_id)
    current = _version_of(pointer(client, run_id))
    n = 1 + max([current or 0, *(v for _, v in listed)])
    path = version_path(n)
    client.log_artifacts(run_id, str(src), artifact_path=path)
    client.set_tag(run_id, POINTER_TAG, path)  # the commit point: only now is the new version the checkpoint
    delete_older(client, run_id, keep=path, listed=listed)
    return path


def delete_older(client: Any, run_id: str, keep: str, listed: list[tuple[str, int]] | None = None) -> int:
    """Delete every version folder but `keep`; returns how many went. Stores that cannot delete (MLflow
    raises NotImplementedError, or a server refuses) keep them: only space is lost, never correctness."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    stale = [p for p, _ in (listed if listed is not None else _listed_versions(client, run_id)) if p != keep]
    if not stale:
        return 0
    run = client.get_run(run_id)
    repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri)
    gone = 0
    for path in stale:
        try:
            repo.delete_artifacts(path)
            gone += 1
        except Exception:  # noqa: BLE001 - NotImplementedError, HTTP 4xx/5xx: the version just stays
            break
    return gone


def download(client: Any, run_id: str, dest_parent: Path) -> Path | None:
    """Download the version the run's tag names into a fresh folder under `dest_parent`; None when the run
    has no checkpoint yet. The tag only ever names a complete upload, so what comes back is complete."""
    path = pointer(client, run_id)
    if not path:
        return None
    dest_parent = Path(dest_parent)
    dest_parent.mkdir(parents=True, exist_ok=True)
    local = Path(tempfile.mkdtemp(prefix="resume-", dir=dest_parent))
    try:
        return Path(client.download_artifacts(run_id, path, str(local)))
    except Exception:
        shutil.rmtree(local, ignore_errors=True)
        raise


def shared_dir(study_dir: Path, key: str) -> Path:
    """Where mode `shared` keeps a trial's checkpoint: `<study>/checkpoints/<trial key>`."""
    return Path(study_dir) / "checkpoints" / key


def carry_over(client: Any, runs: dict[str, Any], study_dir: Path, mode: str) -> int:
    """Move the checkpoint of every unfinished trial in `runs` (trial key -> MLflow run) to where `mode`
    keeps it, from where the other mode did; returns how many moved.

    Needed when a relaunch uses the other mode: each attempt reads only its own mode's place, so without
    this an interrupted trial would restart from scratch. After a launch's carry-over only the current
    mode's place holds a trial's checkpoint, so the one found is always the newest. The copy is made
    complete first (an upload that moves the tag last; the link swap), and only then is the source removed:
    a kill in between leaves two identical copies, and the next launch moves whichever its mode lacks.
    Runs only on the driver, which sees both the study directory and the MLflow run.
    """
    from study.tracking import FINISHED

    moved = 0
    for key, run in runs.items():
        if run.info.status == FINISHED:
            continue
        run_id, local = run.info.run_id, shared_dir(study_dir, key)
        if mode == "mlflow":
            found = newest_checkpoint(local)
            if found is None:
                continue
            upload(client, run_id, found)
            discard_checkpoint(local)
        else:
            if not run.data.tags.get(POINTER_TAG):
                continue
            with tempfile.TemporaryDirectory(prefix="dpl-carry-") as tmp:
                store_checkpoint(download(client, run_id, Path(tmp)), local)
            client.delete_tag(run_id, POINTER_TAG)
            delete_older(client, run_id, keep="")
        moved += 1
    return moved
