"""The one way the tests and the benchmarks give a process of our service its settings, and start it.

A worker or CLI process gets this process's environment less every ``SFS_CLEANUP_`` variable
(the developer's own settings never leak in) and every ``BENCH_`` one (the rate-limit
benchmark's Celery baseline), the project first on ``PYTHONPATH``, then the Redis URL, the fake
API's endpoint, project and shares, the credentials, and the caller's own settings as explicit
overrides: :class:`ServiceEnv`. Workers start through :func:`start_workers`, the CLI through
:func:`cli_command` or :func:`run_cli`, which say ``--yes`` for a deleting command as a script
does (:func:`as_script`).

Only the loopback address is ever used: the Redis URL and the fake's endpoint come from servers
the tests and benchmarks start on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sandbox.processes import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "SFS_CLEANUP_"
#: Variables a child never inherits: our settings, and the rate-limit benchmark's Celery baseline's.
NOT_INHERITED = (PREFIX, "BENCH_")

#: Every setting that names a credential: a :class:`ServiceEnv`'s ``auth`` holds exactly these.
AUTH_VARIABLES = (
    "SFS_CLEANUP_AUTH_TOKEN",
    "SFS_CLEANUP_IAM_ENDPOINT",
    "SFS_CLEANUP_IAM_USER",
    "SFS_CLEANUP_IAM_PASSWORD",
    "SFS_CLEANUP_IAM_DOMAIN",
    "SFS_CLEANUP_ACCESS_KEY",
    "SFS_CLEANUP_SECRET_KEY",
    "SFS_CLEANUP_SECURITY_TOKEN",
    "SFS_CLEANUP_METADATA_CREDENTIALS",
    "SFS_CLEANUP_METADATA_URL",
    "SFS_CLEANUP_METADATA_CACHE_KEY",
    "SFS_CLEANUP_AGENCY_DOMAIN",
    "SFS_CLEANUP_AGENCY_NAME",
    "SFS_CLEANUP_AGENCY_IAM_ENDPOINT",
)


class Fake(Protocol):
    """What the environment needs of a fake API: the in-process ``FakeApi`` or a ``FakeApiProcess``."""

    @property
    def url(self) -> str: ...

    @property
    def project_id(self) -> str: ...

    @property
    def share_ids(self) -> Sequence[str]: ...

    @property
    def token(self) -> str: ...


def inherited() -> dict[str, str]:
    """This process's environment for a child: no ``SFS_CLEANUP_`` or ``BENCH_`` variable, and the
    project first on ``PYTHONPATH`` (whatever was there stays after it)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(NOT_INHERITED)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# --- Credentials ---------------------------------------------------------------------------------
def token_auth(token: str) -> dict[str, str]:
    return {"SFS_CLEANUP_AUTH_TOKEN": token}


def iam_auth(fake: Fake, user: str, password: str, domain: str) -> dict[str, str]:
    """An IAM password login against the fake (it serves IAM's token endpoint too)."""
    return {
        "SFS_CLEANUP_IAM_ENDPOINT": fake.url,
        "SFS_CLEANUP_IAM_USER": user,
        "SFS_CLEANUP_IAM_PASSWORD": password,
        "SFS_CLEANUP_IAM_DOMAIN": domain,
    }


def metadata_auth(
    metadata_url: str, cache_key: str | None = None, agency: tuple[str, str, str] | None = None
) -> dict[str, str]:
    """The instance's agency, from a (fake) metadata service; ``cache_key`` shares it in Redis;
    ``agency`` (IAM endpoint, domain, name): assume that agency of another account with it."""
    env = {"SFS_CLEANUP_METADATA_CREDENTIALS": "true", "SFS_CLEANUP_METADATA_URL": metadata_url}
    if cache_key is not None:
        env["SFS_CLEANUP_METADATA_CACHE_KEY"] = cache_key
    if agency is not None:
        env["SFS_CLEANUP_AGENCY_IAM_ENDPOINT"], env["SFS_CLEANUP_AGENCY_DOMAIN"], env["SFS_CLEANUP_AGENCY_NAME"] = (
            agency
        )
    return env


def aksk_auth(access_key: str, secret_key: str, security_token: str | None = None) -> dict[str, str]:
    env = {"SFS_CLEANUP_ACCESS_KEY": access_key, "SFS_CLEANUP_SECRET_KEY": secret_key}
    if security_token is not None:
        env["SFS_CLEANUP_SECURITY_TOKEN"] = security_token
    return env


# --- The environment -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceEnv:
    """The settings of every process of one system under test: where Redis and the API are, the
    credentials, and the caller's overrides (its rate limit, batch sizes, timings, log format).

    ``share_ids`` None leaves ``SFS_CLEANUP_SHARE_IDS`` unset (a manifest names its shares).
    """

    redis_url: str
    endpoint: str
    project_id: str
    share_ids: tuple[str, ...] | None = None
    auth: Mapping[str, str] = field(default_factory=dict)
    settings: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        stray = sorted(name for name in self.auth if name not in AUTH_VARIABLES)
        if stray:
            raise ValueError(f"auth holds only credentials, not {stray}")
        misplaced = sorted(name for name in self.settings if name in AUTH_VARIABLES)
        if misplaced:
            raise ValueError(f"credentials go in auth, not in settings: {misplaced}")

    @classmethod
    def for_fake(
        cls,
        redis_url: str,
        fake: Fake,
        *,
        auth: Mapping[str, str] | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> ServiceEnv:
        """Against ``fake``: its endpoint, project and every share; its token unless ``auth`` is given."""
        return cls(
            redis_url=redis_url,
            endpoint=fake.url,
            project_id=fake.project_id,
            share_ids=tuple(fake.share_ids),
            auth=dict(token_auth(fake.token) if auth is None else auth),
            settings=dict(settings or {}),
        )

    def env(self, **extra: str) -> dict[str, str]:
        """The whole environment of a child process; ``extra`` overrides anything, for one process."""
        env = inherited()
        env[PREFIX + "REDIS_URL"] = self.redis_url
        env[PREFIX + "API_ENDPOINT"] = self.endpoint
        env[PREFIX + "PROJECT_ID"] = self.project_id
        if self.share_ids is not None:
            env[PREFIX + "SHARE_IDS"] = ",".join(self.share_ids)
        env.update(self.auth)
        env.update(self.settings)
        env.update(extra)
        return env


# --- Workers -------------------------------------------------------------------------------------
def start_workers(workers: Sequence[WorkerProcess], *, timeout: float = 60.0) -> list[WorkerProcess]:
    """Start every worker (``celery -A <app> worker``, each in its own process group) at once, then
    wait until each is ready. If one exits or is not ready in ``timeout`` seconds, all of them are
    stopped and the error is raised."""
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready(timeout=timeout)
    except BaseException:
        stop_workers(workers)
        raise
    return list(workers)


def stop_workers(workers: Sequence[WorkerProcess], grace: float = 20.0) -> None:
    """SIGTERM each worker's group (a soft shutdown), SIGKILL after ``grace`` seconds."""
    for worker in workers:
        worker.stop(grace=grace)


# --- The CLI -------------------------------------------------------------------------------------
def as_script(args: tuple[str, ...] | list[str]) -> list[str]:
    """A command as a script runs it: a deleting ``purge`` or ``runs replay`` says ``--yes``.

    The refusal without it is tested on its own (``test_consent.py``), calling the CLI directly.
    """
    argv = list(args)
    deletes = (argv[:1] == ["purge"] and "--dry-run" not in argv) or argv[:2] == ["runs", "replay"]
    return [*argv, "--yes"] if deletes and "--yes" not in argv else argv


def cli_args(*args: str) -> list[str]:
    """``-m scheduler.cli ARGS`` (with ``--yes`` where a script says it), for a Python command line."""
    return ["-m", "scheduler.cli", *as_script(args)]


def cli_command(*args: str) -> list[str]:
    """``sfs-cleanup ARGS`` as this interpreter runs it."""
    return [sys.executable, *cli_args(*args)]


def run_cli(env: Mapping[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``sfs-cleanup ARGS`` to its end; its exit code, output and errors (never raises on a code)."""
    return subprocess.run(
        cli_command(*args), env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )
