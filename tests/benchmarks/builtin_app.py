"""The baseline of the rate-limit benchmark: Celery's built-in ``rate_limit``. NOT the product.

A minimal Celery app with one task, ``bench.delete(share_id, task_id)``, that sends one DELETE
to the fake SFS Turbo API with httpx and returns the HTTP status. The task is decorated with
Celery's own ``rate_limit=f"{R}/s"``, configured as in experiment E1 of the research notes
(late acks, prefetch 1): a token bucket in each worker instance's memory, so N instances send
about N x R. It never retries: every Celery task is exactly one request, so the fake's counts
describe what Celery's limiter let through.

Started by the benchmark as ``celery -A tests.benchmarks.builtin_app worker``; settings come
from the environment:

* ``BENCH_BROKER_URL``: the Redis broker (only 127.0.0.1);
* ``BENCH_RATE_LIMIT``: R, requests per second (the task's ``rate_limit``);
* ``BENCH_API_ENDPOINT``, ``BENCH_PROJECT_ID``, ``BENCH_AUTH_TOKEN``: the fake API.
"""

from __future__ import annotations

import os
from typing import Final

import httpx
from celery import Celery
from celery.signals import worker_process_init

QUEUE: Final = "bench.delete"
TASK_NAME: Final = "bench.delete"


def _rate() -> float:
    return float(os.environ.get("BENCH_RATE_LIMIT", "50"))


def make_app(broker_url: str) -> Celery:
    """The app, for the workers (from the environment) and for the harness that sends the tasks."""
    app = Celery("bench_builtin", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=True,
    )
    return app


app = make_app(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"))

_client: httpx.Client | None = None
_client_pid: int | None = None


def client() -> httpx.Client:
    """One httpx client per process (never shared across a fork)."""
    global _client, _client_pid  # noqa: PLW0603 - one lazily built client per process
    if _client is None or _client_pid != os.getpid():
        _client = httpx.Client(
            base_url=os.environ.get("BENCH_API_ENDPOINT", "http://127.0.0.1:8099"),
            headers={"X-Auth-Token": os.environ.get("BENCH_AUTH_TOKEN", "fake-token")},
            timeout=httpx.Timeout(30.0, connect=5.0),
        )
        _client_pid = os.getpid()
    return _client


@worker_process_init.connect  # type: ignore[untyped-decorator,unused-ignore]
def _fresh_client(**_: object) -> None:
    global _client  # noqa: PLW0603
    _client = None


@app.task(name=TASK_NAME, rate_limit=f"{_rate():g}/s", acks_late=True)  # type: ignore[untyped-decorator,unused-ignore]
def delete(share_id: str, task_id: str) -> int:
    """One DELETE of one HPC-cache task; the status code is the result (it is not stored)."""
    project = os.environ.get("BENCH_PROJECT_ID", "")
    path = f"/v1/{project}/sfs-turbo/{share_id}/hpc-cache/task/{task_id}"
    return client().delete(path).status_code
