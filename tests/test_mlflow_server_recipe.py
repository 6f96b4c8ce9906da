"""cluster/mlflow-server.sh refuses, in one line and before starting anything, a setup that would leak the
database password or could not work: a password in the backend-store URI (the URI would be in the server's
environment and logs), a PostgreSQL backend without a password from the environment or a .pgpass file, a
PostgreSQL backend without its driver, and a public bind address. The server it starts on PostgreSQL is
tested in tests/test_tracking_server.py (its processes' argv carry neither the URI nor the password)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from _servers import BIN, RECIPE


def recipe(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    home = tmp_path / "home"  # no ~/.pgpass
    home.mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MLFLOW_BACKEND"))}
    full = {**base, "HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DPL_MLFLOW_FOREGROUND": "1",
            **env}
    return subprocess.run(["bash", str(RECIPE), str(tmp_path / "store"), *(args or ("127.0.0.1", "1"))],
                          env=full, capture_output=True, text=True, timeout=120)


def refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and not proc.stdout, (proc.returncode, proc.stdout, proc.stderr)
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_password_in_the_backend_store_uri_is_refused_and_not_echoed(tmp_path) -> None:
    line = refused(recipe(tmp_path, MLFLOW_BACKEND_STORE_URI="postgresql://mlflow:hunter2@db:5432/mlflow",
                          PGPASSWORD="x"), "carries a password", "PGPASSWORD")
    assert "hunter2" not in line


def test_postgresql_without_a_password_is_refused(tmp_path) -> None:
    refused(recipe(tmp_path, MLFLOW_BACKEND_STORE_URI="postgresql://mlflow@db:5432/mlflow"),
            "PostgreSQL backend: no password", "PGPASSWORD", "Secret mlflow-db")


def test_postgresql_without_its_driver_is_refused(tmp_path) -> None:
    fake = tmp_path / "nodriver"
    fake.mkdir()
    (fake / "psycopg.py").write_text("raise ImportError('no psycopg here')\n")  # shadows the installed driver
    refused(recipe(tmp_path, MLFLOW_BACKEND_STORE_URI="postgresql://mlflow@db:5432/mlflow", PGPASSWORD="x",
                   PYTHONPATH=str(fake)), "needs its driver", "dpl-study[postgres]")


def test_a_public_bind_address_is_refused(tmp_path) -> None:
    refused(recipe(tmp_path, "0.0.0.0", "5000"), "refusing to bind 0.0.0.0", "DPL_ALLOW_PUBLIC_MLFLOW")
    assert not (tmp_path / "store").exists()  # nothing made
