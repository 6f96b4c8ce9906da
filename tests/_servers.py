"""Servers the tests (and bench/tracking_load.py) run on loopback, each in a process group of its own.

- `Postgres`: a private PostgreSQL instance: `initdb` into a fresh folder under /tmp, a free loopback port
  (and its unix socket in that folder), password authentication over TCP. PostgreSQL refuses to run as
  root, and CI runs as root: then it runs as the `postgres` user that Debian's package creates (`nobody`
  where there is none) through `setpriv`, which execs, so the process started is the postmaster itself.
  Its backends put themselves in sessions of their own (PostgreSQL calls setsid), so it is stopped by its
  postmaster (SIGINT: fast shutdown), never by a broad kill.
- `MlflowServer`: the project's recipe `cluster/mlflow-server.sh` in the foreground (DPL_MLFLOW_FOREGROUND=1)
  on a fixed loopback port; `kill()` is `kill -9` of its whole process group (the CLI and its uvicorn
  workers), `freeze()`/`thaw()` stop and continue it (a server that accepts connections but answers none),
  and `start()` again restarts it on the same port and store.

An MLflow server takes 20-60 s to answer on 2 busy cores: tests share one per backend for the session
(tests/conftest.py, `mlflow_servers`).
"""
from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RECIPE = REPO / "cluster" / "mlflow-server.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def tails(logs: list[Path], chars: int = 3000) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in logs if p.exists())


def wait_for(what: str, check: Callable[[], Any], timeout: float, logs: list[Path] = (),
             proc: subprocess.Popen | None = None) -> Any:
    """`check()`'s first truthy value, polled every 0.3 s; an AssertionError with the logs' tails when
    `timeout` passes or `proc` exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{tails(list(logs))}")


def start(procs: list[subprocess.Popen], cmd: list[str], env: dict[str, str], log: Path,
          cwd: Path = REPO) -> subprocess.Popen:
    """`cmd` in a session (so a process group) of its own, output appended to `log`; added to `procs`."""
    with open(log, "ab") as out:
        p = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
    procs.append(p)
    return p


def kill_group(p: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 10) -> None:
    """Signal the process group `p` leads (started with `start`), and reap `p`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=timeout)


@contextlib.contextmanager
def process_groups(before_kill: Callable[[subprocess.Popen], None] | None = None) -> Iterator[list[subprocess.Popen]]:
    """A list to `start` processes into; at the end every group still alive is SIGKILLed, newest first
    (`before_kill(p)` first, for processes that left their group, e.g. a node in its own namespace)."""
    procs: list[subprocess.Popen] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            if before_kill is not None and p.poll() is None:
                with contextlib.suppress(OSError):
                    before_kill(p)
            kill_group(p)


def group_pids(pgid: int) -> list[int]:
    """Processes whose process group is `pgid`."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid:
                    out.append(int(entry.name))
    return out


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


# ------------------------------------------------------------------------------------------- PostgreSQL


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL server binaries: Debian's /usr/lib/postgresql/<major>/bin, else `initdb` on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(re.sub(r"\D", "", p.parts[-3]) or 0))
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and no `postgres` or `nobody` user to run PostgreSQL as")


class Postgres:
    """A private PostgreSQL server (see the module docstring). `durable=False` (tests) turns fsync off."""

    USER = "dpl"

    def __init__(self, durable: bool = False, max_connections: int = 300) -> None:
        self.durable, self.max_connections = durable, max_connections
        self.password = secrets.token_hex(12)
        self.root: Path | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "Postgres":
        bindir = postgres_bindir()
        if bindir is None:
            raise FileNotFoundError("no PostgreSQL server binaries (Debian: apt-get install postgresql)")
        self.root = Path(tempfile.mkdtemp(prefix="dpl-pg-", dir="/tmp"))  # short: unix socket paths are limited
        run_as: list[str] = []
        if os.geteuid() == 0:
            user = _unprivileged_user()
            entry = pwd.getpwnam(user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            run_as = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", "--"]
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if run_as:
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(self.root / "data"), "-U", self.USER,
                        "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                        "--no-instructions", *([] if self.durable else ["--no-sync"])],
                       check=True, capture_output=True, timeout=120)
        pwfile.unlink()
        self.port = free_port()
        settings = {"listen_addresses": "127.0.0.1", "max_connections": str(self.max_connections)}
        if not self.durable:
            settings.update(fsync="off", full_page_writes="off", synchronous_commit="off")
        with open(self.root / "postgres.log", "ab") as log:
            self.proc = subprocess.Popen(
                [*run_as, str(bindir / "postgres"), "-D", str(self.root / "data"), "-k", str(self.root),
                 "-p", str(self.port), *(a for k, v in settings.items() for a in ("-c", f"{k}={v}"))],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for("PostgreSQL", self._answers, timeout, [self.root / "postgres.log"], self.proc)
        return self

    def connect(self, dbname: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=self.USER, password=self.password,
                               dbname=dbname, autocommit=True, connect_timeout=5)

    def _answers(self) -> bool:
        try:
            with self.connect():
                return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def create_database(self, name: str) -> str:
        """A new database; returns its URI (no password in it: give `env()` to whoever connects)."""
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def uri(self, dbname: str) -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/{dbname}"

    def env(self) -> dict[str, str]:
        """What a client needs besides the URI: libpq reads the password from PGPASSWORD."""
        return {"PGPASSWORD": self.password}

    def stop(self) -> None:
        """Fast shutdown by the postmaster; SIGKILL of it and its backends if that takes over 20 s."""
        if self.proc is not None and self.proc.poll() is None:
            backends = children(self.proc.pid)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                for pid in [self.proc.pid, *backends]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------------------------------ MLflow


class MlflowServer:
    """`cluster/mlflow-server.sh STORE 127.0.0.1 PORT` in the foreground, in its own process group.

    `backend_uri`: MLFLOW_BACKEND_STORE_URI (default: the recipe's SQLite in `store`); `env`: more of the
    server's environment (PGPASSWORD). The port stays the same across `kill()` and `start()`."""

    def __init__(self, store: Path, backend_uri: str | None = None, env: dict[str, str] | None = None,
                 workers: int = 1, port: int | None = None) -> None:
        self.store = Path(store)
        self.store.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.store / "server.log"
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DPL_MLFLOW_FOREGROUND": "1",
                    "MLFLOW_WORKERS": str(workers), "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}
        self.env.pop("MLFLOW_TRACKING_URI", None)
        if backend_uri:
            self.env["MLFLOW_BACKEND_STORE_URI"] = backend_uri
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, wait: bool = True, timeout: float = 240) -> "MlflowServer":
        with open(self.log, "ab") as out:
            out.write(f"\n=== start {self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            self.proc = subprocess.Popen(["bash", str(RECIPE), str(self.store), "127.0.0.1", str(self.port)],
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         cwd=self.store)
        self.starts += 1
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 240) -> None:
        wait_for(f"the MLflow server {self.url}", lambda: healthy(self.url), timeout, [self.log], self.proc)

    def pids(self) -> list[int]:
        return group_pids(self.proc.pid) if self.proc is not None else []

    def kill(self) -> None:
        """kill -9 of the whole server (its process group), as a crashed pod or node."""
        if self.proc is not None:
            kill_group(self.proc)

    def freeze(self) -> None:
        """SIGSTOP the server: connections are accepted by the kernel and never answered."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)
            kill_group(self.proc)
