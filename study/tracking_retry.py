"""Tracking calls that outlast an MLflow server restart: retried for a time budget, each effect once.

On a cluster every trial logs over HTTP to one tracking server, which may restart (a pod rescheduled, a
`kill -9`, a database failover) while trials run. Decision (docs/RELIABILITY.md, "Tracking server"):

- **The budget is ours and is a time**: `tracking_retry_s` of the study (spec key, default
  `DEFAULT_RETRY_S` = 300 s). A tracking call that fails with a transient error (connection refused or
  reset, a timeout, HTTP 429/5xx) is sent again with jittered exponential back-off (0.5 s doubling to 5 s)
  until it succeeds or the budget since its first failure is spent. MLflow's own urllib3 retries are turned
  off in a study's processes (`MLFLOW_HTTP_REQUEST_MAX_RETRIES=0` unless the environment sets it), so the
  budget is one number an operator can reason about ("the server may be down for 5 minutes") rather than
  MLflow's count of retries times its back-off; a single request still waits at most
  `MLFLOW_HTTP_REQUEST_TIMEOUT` (MLflow's default 120 s) for a server that accepts but does not answer.
- **Past the budget the call raises `TrackingUnavailable`**, a one-line error naming the server and how long
  it was tried. The trial ends with that line (`dpl run`'s FAILED line, `dpl.error` once the server is back)
  and the next launch resumes it from its last checkpoint; nothing waits forever.
- **A call sent again must not repeat its effect.** Every tracking call a trial makes is idempotent when sent
  again as it was: tags and params are set to the same values, artifacts are written to the same paths, and
  a metric batch is resent with the same timestamps, which the SQL store's primary key (key, timestamp, step,
  value) drops as a duplicate; on top of that `log_metrics_once` reads back which (metric, step) pairs the
  run already holds before sending a batch again, so a batch whose response was lost is never doubled
  whatever the store. The one call that is not idempotent, `create_run`, is made safe by
  `study.tracking.attach_trial_run`, which keeps one run per trial key and deletes empty extra ones.
"""
from __future__ import annotations

import http.client
import logging
import os
import random
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from trainables.errors import UserError

#: Seconds a tracking call keeps retrying a transient failure (spec key `tracking_retry_s`).
DEFAULT_RETRY_S = 300.0
FIRST_DELAY_S, MAX_DELAY_S = 0.5, 5.0
#: MLflow error codes a server (or the proxy in front of it) answers while it is overloaded or restarting.
TRANSIENT_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "REQUEST_LIMIT_EXCEEDED",
                   "RESOURCE_EXHAUSTED"}
#: What an overloaded server answers in a 400 BAD_REQUEST (MLflow 3.17 reports its database session errors so):
#: its connection pool exhausted (measured: bench/tracking_load.py, SQLite, 64 trials), SQLite's write lock,
#: PostgreSQL out of connections. The request did nothing; sending it again later is right.
OVERLOAD_MESSAGES = ("QueuePool limit", "database is locked", "too many clients already",
                     "remaining connection slots are reserved")
#: MLflow's own HTTP retries, off in a study's processes: the budget above is the only one.
MLFLOW_RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
T = TypeVar("T")
log = logging.getLogger("dpl.tracking")


class TrackingUnavailable(UserError):
    """The tracking server did not answer within the study's retry budget."""


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_transient(exc: BaseException) -> bool:
    """Whether sending the same call again may succeed: the server was unreachable, slow, or overloaded.

    MLflow wraps a failed request in an MlflowException whose context is the requests/urllib3 error; an
    answer with an error status becomes an MlflowException with the status's code (HTTP 5xx/429 -> one of
    TRANSIENT_CODES) or, for artifact uploads, a requests HTTPError carrying the response. An overloaded
    server's database errors come back as 400 BAD_REQUEST: recognised by their text (OVERLOAD_MESSAGES)."""
    import requests
    import urllib3

    for e in _chain(exc):
        if isinstance(e, TrackingUnavailable):
            return False  # an inner budget already ran out: do not wait a second budget
        if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                          requests.exceptions.RetryError, requests.exceptions.ChunkedEncodingError,
                          urllib3.exceptions.HTTPError, http.client.HTTPException, ConnectionError, TimeoutError)):
            return True
        if isinstance(e, requests.exceptions.HTTPError) and e.response is not None:
            return e.response.status_code == 429 or e.response.status_code >= 500
        code = getattr(e, "error_code", None)
        if code is not None and type(e).__name__ in ("MlflowException", "RestException"):
            return code in TRANSIENT_CODES or any(m in str(e) for m in OVERLOAD_MESSAGES)
    return False


def _reason(exc: BaseException) -> str:
    """The innermost cause in one short line, e.g. `ConnectionRefusedError: [Errno 111] Connection refused`."""
    inner = list(_chain(exc))[-1]
    text = str(inner).splitlines()[0] if str(inner) else ""
    return f"{type(inner).__name__}: {text[:200]}" if text else type(inner).__name__


class PatientClient:
    """An MlflowClient whose every method retries transient failures for `retry_s` seconds.

    Attributes that are not methods (`tracking_uri`) pass through; `raw` is the client itself, for calls
    that a caller retries as a whole with `retry` (a read-back and a resend in one attempt)."""

    def __init__(self, raw: Any, retry_s: float, uri: str) -> None:
        self.raw = raw
        self.retry_s = float(retry_s)
        self.uri = uri

    def retry(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, sent again after each transient failure until the budget is spent."""
        deadline: float | None = None
        delay = FIRST_DELAY_S
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified below; anything else is raised as it is
                if not is_transient(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.retry_s
                    log.warning("dpl: MLflow server %s did not answer (%s); retrying for up to %.0f s", self.uri,
                                _reason(exc), self.retry_s)
                if now >= deadline:
                    raise TrackingUnavailable(
                        f"MLflow tracking server {self.uri} did not answer for {self.retry_s:.0f} s "
                        f"({_reason(exc)}); what the runs hold is kept: start the server and run the same "
                        f"command again to resume (tracking_retry_s sets how long trials wait)") from exc
                time.sleep(min(delay * (0.5 + random.random() / 2), max(0.0, deadline - now)))
                delay = min(delay * 2, MAX_DELAY_S)
            else:
                if deadline is not None:
                    log.warning("dpl: MLflow server %s answers again", self.uri)
                return result

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if not callable(attr):
            return attr

        def patient(*args: Any, **kwargs: Any) -> Any:
            return self.retry(attr, *args, **kwargs)

        patient.__name__ = name
        return patient


def patient(client: Any, tracking_uri: str, retry_s: float | None) -> Any:
    """`client` made patient when it talks to a server over HTTP and a budget is given; else as it is (a
    SQLite or file store fails for reasons a retry does not fix)."""
    if retry_s is None or urllib.parse.urlparse(tracking_uri).scheme not in ("http", "https"):
        return client
    os.environ.setdefault(MLFLOW_RETRIES_ENV, "0")
    return PatientClient(client, retry_s, tracking_uri)


def call(c: Any, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` retried as a whole on a patient client `c`, run once otherwise (for calls that are not
    the client's own methods, such as an artifact repository's)."""
    if isinstance(c, PatientClient):
        return c.retry(fn, *args)
    return fn(*args)


def log_metrics_once(c: Any, run_id: str, metrics: list[Any], tags: dict[str, str] | None = None,
                     chunk: int = 500) -> None:
    """Log `metrics` (mlflow Metric entities), each (key, step) once even when a batch is sent again, and
    then `tags`, in the same request as the last metrics.

    The first attempt sends the batch; an attempt after a transient failure first reads back the steps the
    run holds for those keys (the lost batch may have landed) and sends only what is missing (tags are
    idempotent: they are always sent)."""
    from mlflow.entities import RunTag

    raw = c.raw if isinstance(c, PatientClient) else c
    tag_list = [RunTag(k, v) for k, v in (tags or {}).items()]
    attempts = 0

    def send() -> None:
        nonlocal attempts
        attempts += 1
        pending = metrics
        if attempts > 1:
            held = {(m.key, m.step) for key in {m.key for m in metrics} for m in raw.get_metric_history(run_id, key)}
            pending = [m for m in metrics if (m.key, m.step) not in held]
        starts = list(range(0, len(pending), chunk)) or [0]
        for i in starts:
            last = i == starts[-1]
            if pending[i : i + chunk] or (last and tag_list):
                raw.log_batch(run_id, metrics=pending[i : i + chunk], tags=tag_list if last else [])

    call(c, send)
