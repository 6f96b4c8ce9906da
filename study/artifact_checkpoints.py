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


def pointer(client: Any, run_id: str) -> str | None:
    """The artifact path of the newest complete checkpoint, or None (nothing uploaded yet)."""
    return client.get_run(run_id).data.tags.get(POINTER_TAG)


class RunCheckpoints:
    """The checkpoint versions of one run, as one attempt of a trial keeps them.

    What the run holds (its versions, the pointer) is read from the server once, at this attempt's first
    upload, and then kept by the attempt's own uploads; artifacts are listed and deleted through the run's
    artifact repository, resolved once. So an epoch's checkpoint costs its upload (one PUT per file), the
    pointer's move and one delete; `MlflowClient.list_artifacts` alone sends four requests (it resolves the
    run and its logged models each time), and the first version of this module sent 9.5 per epoch
    (docs/BENCHMARKS.md, "Tracking server load").
    """

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self.current: str | None = None
        self.listed: list[tuple[str, int]] | None = None
        self._repo: Any = None

    def repo(self) -> Any:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        if self._repo is None:
            uri = self.client.get_run(self.run_id).info.artifact_uri
            self._repo = get_artifact_repository(uri, tracking_uri=self.client.tracking_uri)
        return self._repo

    def _read(self) -> None:
        """The versions present (complete or not) and the pointer, once per attempt."""
        if self.listed is None:
            from study.tracking_retry import call

            infos = call(self.client, self.repo().list_artifacts, ARTIFACT_ROOT)
            self.listed = [(i.path, n) for i in infos if i.is_dir and (n := _version_of(i.path)) is not None]
            self.current = pointer(self.client, self.run_id)

    def stage(self, src: Path) -> str:
        """Upload the checkpoint directory `src` as a new version that nothing points at yet; its path.

        The version number is one past every version present (also a partial upload of an attempt that was
        killed), so a new upload never lands in a folder that already holds files."""
        self._read()
        n = 1 + max([_version_of(self.current) or 0, *(v for _, v in self.listed)])
        path = version_path(n)
        self.client.log_artifacts(self.run_id, str(src), artifact_path=path)
        self.listed.append((path, n))
        return path

    def committed(self, path: str) -> int:
        """`path` is now what the pointer names: delete every other version; returns how many went. Stores
        that cannot delete (MLflow raises NotImplementedError, or a server refuses) keep them: only space
        is lost, never correctness."""
        self.current = path
        gone = []
        for old, n in self.listed:
            if old == path:
                continue
            try:
                self.repo().delete_artifacts(old)
            except Exception:  # noqa: BLE001 - NotImplementedError, HTTP 4xx/5xx: the version just stays
                break
            gone.append(old)
        self.listed = [(p, n) for p, n in self.listed if p not in gone]
        return len(gone)

    def discard(self) -> int:
        """Delete every version (after the pointer tag is gone); returns how many went."""
        self._read()
        return self.committed("")

    def upload(self, src: Path) -> str:
        """Stage `src`, then point the run's tag at it (the commit point), then delete the older versions."""
        path = self.stage(src)
        self.client.set_tag(self.run_id, POINTER_TAG, path)  # only now is the new version the checkpoint
        self.committed(path)
        return path


def upload(client: Any, run_id: str, src: Path) -> str:
    """Upload the checkpoint directory `src` as a new version, then point the run's tag at it, then
    delete the versions before it (`RunCheckpoints.upload`, reading the run's state first). Returns the new
    version's artifact path."""
    return RunCheckpoints(client, run_id).upload(src)


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
            RunCheckpoints(client, run_id).discard()
        moved += 1
    return moved
