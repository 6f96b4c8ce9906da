"""Shared test setup: quiet, offline (enforced), private caches; real photographs from scikit-image."""
from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: pytest-xdist workers share the cores: each gets its share for torch's and numpy's OpenMP threads, set before
#: either loads. Two workers spinning two OpenMP threads each on 2 cores took twice the CPU time and twice the
#: wall time of one thread each (docs/BENCHMARKS.md, CI time).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import numpy as np  # noqa: E402 (after the thread count)
import pytest

from _processes import outside_ray_cluster, outside_ray_misuse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True, scope="session")
def _private_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """TORCH_HOME and matplotlib's cache in temp dirs: tests must never use (or need) downloaded weights."""
    root = tmp_path_factory.mktemp("caches")
    os.environ["TORCH_HOME"] = str(root / "torch")
    os.environ["MPLCONFIGDIR"] = str(root / "mpl")
    os.environ.setdefault("DPL_CACHE_DIR", str(root / "dpl"))


# ------------------------------------------------------------------------------------------- Ray

#: The test file whose one test checks, last in the session, that a Ray started outside the suite is untouched.
OUTSIDE_RAY_TEST = "test_outside_ray.py"


@pytest.fixture(autouse=True, scope="session")
def _private_ray() -> Iterator[Path]:
    """Every Ray this suite starts (in-process, `dpl run` subprocesses, `ray start`) uses a temp dir of its
    own: RAY_TMPDIR is where Ray keeps sessions, sockets and `ray_current_cluster`, the file a plain
    `ray.init()` reads to attach to the newest cluster. So no test can attach to the user's Ray (nor
    overwrite that file: `ray.cluster_utils.Cluster` writes it), and $RAY_ADDRESS, which would point
    every `ray.init()` at a cluster, is dropped. The directory is short: Ray's socket paths are
    length-limited."""
    root = Path(tempfile.mkdtemp(prefix="dplray", dir="/tmp"))
    os.environ["RAY_TMPDIR"] = str(root)
    os.environ.pop("RAY_ADDRESS", None)
    yield root
    shutil.rmtree(root, ignore_errors=True)


#: Session fixtures too costly to start in every worker of a parallel run (a PostgreSQL and two MLflow servers):
#: the tests that use one run in one worker.
_SHARED_SESSION_FIXTURES = ("tracking_servers", "smoke_study")


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """The outside-Ray check runs after every other test (it asks whether they left that Ray alone).

    In a parallel run (`make test`: `pytest -n 2 --dist loadgroup`; README) the tests that share a module- or
    class-scoped fixture (a real study launched once and checked by several tests) go to one worker together,
    so the study runs once, as in a serial run; so do the users of a costly session fixture. The groups are
    marked before the other plugins run (xdist turns a mark into an "@group" suffix of the test's id), and
    checked after them: pytest 9.2 ignores how pytest-xdist 3.8 renames a test, and the groups then split
    silently (the smoke study launched once per worker), so such a pair is refused."""
    last = [item for item in items if item.path.name == OUTSIDE_RAY_TEST]
    rest = [item for item in items if item.path.name != OUTSIDE_RAY_TEST]
    if os.environ.get("PYTEST_XDIST_WORKER"):  # workers that start with the long ones end together
        rest.sort(key=lambda item: item.get_closest_marker("slow") is None)
    items[:] = rest + last
    for item in items:
        group = _shared_fixture_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    yield
    if os.environ.get("PYTEST_XDIST_WORKER") and getattr(config.option, "loadgroup", False):  # (set by xdist)
        lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if lost:  # (a worker's exception reaches the terminal as xdist's own INTERNALERROR: say it on stderr too)
            message = (f"pytest-xdist's --dist loadgroup has no effect with pytest {pytest.__version__} ({len(lost)} "
                       f"grouped tests, e.g. {lost[0]}): install pytest<9.2 (pyproject.toml), or run with -n 0")
            os.write(2, f"ERROR: {message}\n".encode())
            raise pytest.UsageError(message)


def _shared_fixture_group(item: pytest.Item) -> str | None:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    for name in _SHARED_SESSION_FIXTURES:
        if name in info.names_closure:
            return name
    for defs in info.name2fixturedefs.values():
        if defs and defs[-1].scope in ("module", "class", "package"):
            return item.path.name
    return None


@pytest.fixture(autouse=True, scope="session")
def outside_ray(request: pytest.FixtureRequest, _private_ray: Path) -> Iterator[dict[str, Any] | None]:
    """A Ray "the user" started before the suite, where a plain `ray.init()` of the suite would find it (it
    is the newest cluster of the suite's own Ray temp dir), running for the whole session; None when the
    session does not include OUTSIDE_RAY_TEST (a single test file starts no sentinel).
    `tests/test_outside_ray.py` checks at the end that it is still alive and that no driver ever connected.

    In a parallel run each worker has its own (in its own Ray temp dir), and a worker may run that test before
    its other tests, so every worker repeats the check here, after its last test: a failure is an error at
    the teardown of that test."""
    if not any(item.path.name == OUTSIDE_RAY_TEST for item in request.session.items):
        yield None
        return
    with outside_ray_cluster(_private_ray / "ray") as cluster:
        yield cluster
        if os.environ.get("PYTEST_XDIST_WORKER"):
            misuse = outside_ray_misuse(cluster)
            assert misuse is None, f"{misuse} (worker {os.environ['PYTEST_XDIST_WORKER']})"


#: The switches a driver sets for Tune, MLflow and its workers (study.driver.STUDY_ENV, study.batch.run_batch)
#: and the plugin variables: a test that leaves one changed decides how every later `dpl run` of its process
#: behaves (a leaked RAY_AIR_NEW_OUTPUT=0 once turned a later --verbose run's tables into Tune's classic ones).
_GUARDED_ENV = ("RAY_AIR_NEW_OUTPUT", "TUNE_PRINT_ALL_TRIAL_ERRORS", "TUNE_DISABLE_STRICT_METRIC_CHECKING",
                "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",
                "DPL_TASKS", "PYTHONPATH")


@pytest.fixture(autouse=True)
def _environment_left_as_found() -> Iterator[None]:
    """Each test leaves the guarded variables as it found them (an error at its teardown names it)."""
    before = {k: os.environ.get(k) for k in _GUARDED_ENV}
    yield
    changed = {k: (v, os.environ.get(k)) for k, v in before.items() if os.environ.get(k) != v}
    assert not changed, f"this test left environment variables changed (before, after): {changed}"


# ------------------------------------------------------------------------------------- no network

#: Host names that resolve on this machine without asking a DNS server.
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", socket.gethostname()}


@functools.cache
def _is_local_ip(host: str) -> bool:
    """Loopback, unspecified, or an address of one of this machine's own interfaces (Ray binds its node
    IP, e.g. eth0's, and connects to it): binding a socket to it succeeds only for local addresses."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if ip.is_loopback or ip.is_unspecified:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:  # bind() is not patched
            probe.bind((host, 0))
        return True
    except OSError:
        return False


def _is_local_host(host: Any) -> bool:
    if host in (None, b"", ""):
        return True  # getaddrinfo(None, port): the wildcard/loopback address
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host.lower() in _LOCAL_NAMES or host.lower().endswith(".localhost"):
        return True
    try:
        return _is_local_ip(host)
    except ValueError:
        return False  # a name that would need DNS


class NetworkGuard:
    """Records every attempt to reach another machine; the attempt itself raises an OSError, as a real
    offline machine would, so code under test takes its offline path instead of hanging on DNS or TCP."""

    def __init__(self) -> None:
        self.attempts: list[str] = []
        self._lock = threading.Lock()

    def block(self, what: str, lookup: bool = False) -> OSError:
        """The error an offline machine gives: a failed name lookup, or a refused connection."""
        with self._lock:
            self.attempts.append(what)
        message = f"network access blocked in tests ({what}); see tests/conftest.py"
        return socket.gaierror(socket.EAI_NONAME, message) if lookup else ConnectionRefusedError(message)

    @contextlib.contextmanager
    def expected(self) -> Iterator[list[str]]:
        """For a test of the offline path: the attempts made inside are required, and forgiven."""
        start = len(self.attempts)
        seen: list[str] = []
        try:
            yield seen
        finally:
            with self._lock:
                seen.extend(self.attempts[start:])
                del self.attempts[start:]
        assert seen, "expected a blocked network attempt, but nothing tried the network"


@pytest.fixture(autouse=True, scope="session")
def _network_guard() -> Iterator[NetworkGuard]:
    """No test may reach another machine: name lookups of non-local hosts and connections to non-local
    addresses raise (loopback, this machine's own addresses and unix sockets keep working: Ray, MLflow
    servers and the tests use them). Installed for the whole session, so session fixtures are covered too.

    It patches the `socket` module of this pytest process only: Ray workers and subprocesses (the CLI
    run with subprocess) are other processes and are not guarded.
    """
    guard = NetworkGuard()
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo, real_byname, real_byname_ex = socket.getaddrinfo, socket.gethostbyname, socket.gethostbyname_ex

    def target(address: Any) -> Any:
        return address[0] if isinstance(address, tuple) and address else None

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local_host(target(address)):
            raise guard.block(f"connect to {address!r}")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local_host(target(address)):
            raise guard.block(f"connect_ex to {address!r}")
        return real_connect_ex(self, address)

    def resolver(real: Any) -> Any:
        @functools.wraps(real)
        def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
            if not _is_local_host(host):
                raise guard.block(f"name lookup of {host!r}", lookup=True)
            return real(host, *args, **kwargs)
        return resolve

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        mp.setattr(socket.socket, "connect_ex", connect_ex)
        mp.setattr(socket, "getaddrinfo", resolver(real_getaddrinfo))
        mp.setattr(socket, "gethostbyname", resolver(real_byname))
        mp.setattr(socket, "gethostbyname_ex", resolver(real_byname_ex))
        yield guard


@pytest.fixture(autouse=True)
def _no_network(_network_guard: NetworkGuard) -> Iterator[None]:
    """Fail the test that tried the network, even where its code caught the error and went on."""
    start = len(_network_guard.attempts)
    yield
    tried = _network_guard.attempts[start:]
    if tried:
        del _network_guard.attempts[start:]
        pytest.fail(f"test tried the network ({len(tried)}x): {'; '.join(tried[:3])}", pytrace=False)


@pytest.fixture
def network_guard(_network_guard: NetworkGuard) -> NetworkGuard:
    """The session's guard, for tests of the offline path (`with network_guard.expected(): ...`)."""
    return _network_guard


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real photographs that ship offline with scikit-image, as 128x128 PNG crops."""
    from PIL import Image
    from skimage import data

    out = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        img = getattr(data, name)()
        h, w = img.shape[:2]
        s = min(h, w)
        crop = Image.fromarray(img[(h - s) // 2 : (h + s) // 2, (w - s) // 2 : (w + s) // 2]).resize((128, 128))
        paths[name] = out / f"{name}.png"
        crop.save(paths[name])
    return paths


def rng_images(n: int, size: int, seed: int = 0) -> "np.ndarray":
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


# ------------------------------------------------------------------------ tracking servers (shared)


class TrackingServers:
    """The session's MLflow servers, one per backend (`sqlite`, `postgres`), each started on first use by
    the project's recipe (tests/_servers.py); `postgres` is the private PostgreSQL the second one uses."""

    def __init__(self, root_factory: pytest.TempPathFactory) -> None:
        self._root = root_factory
        self._servers: dict[str, Any] = {}
        self._postgres: Any = None

    @property
    def postgres(self) -> Any:
        if self._postgres is None:
            from _servers import Postgres, postgres_bindir

            missing = "PostgreSQL server binaries (apt-get install postgresql)" if postgres_bindir() is None else None
            try:
                import psycopg  # noqa: F401 - the driver MLflow's SQLAlchemy uses for postgresql://
            except ImportError:
                missing = "the psycopg driver (pip install -e '.[test]')"
            if missing:
                if os.environ.get("CI"):
                    pytest.fail(f"CI must have {missing}: .ci/run installs them")
                pytest.skip(f"needs {missing}")
            self._postgres = Postgres()
            self._postgres.start()
        return self._postgres

    def get(self, backend: str) -> Any:
        """The running server on `backend`; tests that kill or freeze it leave it running again."""
        from _servers import MlflowServer

        if backend not in self._servers:
            store = self._root.mktemp(f"mlflow-{backend}")
            if backend == "postgres":
                pg = self.postgres
                server = MlflowServer(store, pg.create_database("mlflow"), pg.env())
            else:
                server = MlflowServer(store)
            self._servers[backend] = server
            server.start()
        return self._servers[backend]

    def close(self) -> None:
        for server in self._servers.values():
            server.stop()
        if self._postgres is not None:
            self._postgres.stop()


@pytest.fixture(scope="session")
def tracking_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingServers]:
    """MLflow servers on SQLite and on PostgreSQL, shared by the session (each takes 20-60 s to start)."""
    servers = TrackingServers(tmp_path_factory)
    try:
        yield servers
    finally:
        servers.close()


# ------------------------------------------------------------------------ the smoke study (shared)


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One real smoke study, `make demo`'s launch then its faults, relaunch and analysis, each step run on
    first use (tests/_smoke_study.py); the console and pipeline tests check the same store."""
    from _smoke_study import SmokeStudy

    return SmokeStudy(tmp_path_factory.mktemp("smoke-study"))
