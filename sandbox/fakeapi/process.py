"""The fake in a child process, so that a benchmark's client and the fake do not share one GIL.

The child binds a free port itself and writes a small "ready" JSON file once it listens, so
there is no window in which another process could take a port chosen in advance.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from sandbox.fakeapi.config import ConfigError, FakeConfig, apply_patch

# The directory that holds the `scheduler` package, so the child imports this very code.
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


class FakeApiProcess:
    """``python -m sandbox.fakeapi`` as a child process; ``with FakeApiProcess(cfg) as api: ...``."""

    def __init__(self, config: FakeConfig | None = None, *, python: str = sys.executable, **overrides: Any) -> None:
        base = config or FakeConfig()
        self.config = apply_patch(base, overrides, runtime=False) if overrides else base.validate()
        self.python = python
        self.url = ""
        self.info: dict[str, Any] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None  # set by stop(): 0 when the child shut down cleanly
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._client: httpx.Client | None = None

    @property
    def project_id(self) -> str:
        return str(self.info["project_id"])

    @property
    def share_ids(self) -> list[str]:
        return [str(share) for share in self.info["share_ids"]]

    @property
    def token(self) -> str:
        return self.config.tokens[0]

    def start(self, timeout: float = 30.0) -> FakeApiProcess:
        self._workdir = tempfile.TemporaryDirectory(prefix="sfs-fakeapi-")
        work = Path(self._workdir.name)
        config_file, ready_file, log_file = work / "config.json", work / "ready.json", work / "fakeapi.log"
        config_file.write_text(json.dumps(self.config.to_dict()), encoding="utf-8")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_SOURCE_ROOT), env.get("PYTHONPATH")]))
        args = [
            self.python, "-m", "sandbox.fakeapi",
            "--config-file", str(config_file),
            "--ready-file", str(ready_file),
            "--quiet",
        ]  # fmt: skip
        with log_file.open("wb") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
                args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not ready_file.exists():
            if self.proc.poll() is not None:
                tail = log_file.read_text(errors="replace")[-3000:]
                self._cleanup()
                raise RuntimeError(f"the fake API process exited at start:\n{tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("the fake API process did not become ready")
            time.sleep(0.02)
        self.info = json.loads(ready_file.read_text(encoding="utf-8"))
        self.url = str(self.info["url"])
        self._client = httpx.Client(base_url=self.url, timeout=10.0)
        self._client.get("/_fake/stats").raise_for_status()  # it answers, not just listens
        return self

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc is not None:
            self.returncode = proc.returncode
        self._cleanup()

    def _cleanup(self) -> None:
        self.proc = None
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> FakeApiProcess:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- Control, through the /_fake/* routes ---------------------------------------------

    def _http(self) -> httpx.Client:
        if self._client is None:
            raise RuntimeError("the fake API process is not running")
        return self._client

    def _get(self, path: str, **params: str) -> Any:
        response = self._http().get(path, params=params)
        response.raise_for_status()
        return response.json()

    def _post(self, path: str, payload: Any = None) -> Any:
        response = self._http().post(path, json=payload)
        if response.status_code == 400 and path == "/_fake/config":
            raise ConfigError(list(response.json().get("problems", [])))
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._get("/_fake/stats")
        return result

    def deleted(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get("/_fake/deleted")
        return result

    def reset_stats(self) -> None:
        self._post("/_fake/reset_stats")

    def configure(self, **patch: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._post("/_fake/config", patch)
        return result

    def tasks(self, share_id: str | None = None) -> list[dict[str, str]]:
        params = {"share_id": share_id} if share_id is not None else {}
        result: list[dict[str, str]] = self._get("/_fake/tasks", **params)["tasks"]
        return result

    def revoke_tokens(self) -> int:
        return int(self._post("/_fake/revoke_tokens")["revoked"])
