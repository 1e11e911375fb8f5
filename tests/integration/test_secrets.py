"""Secrets never leave memory: not in logs, not in Redis, not in Celery messages, not in errors.

For each auth mode a real purge runs (the CLI, real Celery workers at DEBUG, a real Redis, the
fake API) with distinctive secret values, followed by a run with credentials that cannot work.
Captured along the way:

* every log line: the worker log files, and the stdout/stderr of every CLI call;
* the raw broker messages: the jobs waiting in the ``sfs.delete`` list (planned with no worker
  running), the ``unacked`` hash while jobs run, every pub/sub message (Celery's task events);
* the whole of Redis after each run: every key of every type (strings, hashes, lists, sets,
  zsets, streams), kombu message bodies decoded;
* the reports, the audit export, and exception texts (a refused login's ``AuthError``, the
  reprs of settings and auth objects).

No secret may appear anywhere, as is or base64-, URL-, JSON- or hex-encoded. In IAM mode the
tokens the fake issued must not appear either: the shared cache holds them encrypted.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from sandbox.fakeapi.config import FakeConfig
from sandbox.fakeapi.server import FakeApi
from tests.support.environment import aksk_auth, iam_auth, token_auth
from tests.support.secrets import (
    AuthCluster,
    PubSubRecorder,
    RedisDump,
    dump_redis,
    find_leaks,
    issued_tokens,
    poll,
    write_manifest,
)
from worker.settings import load_settings

pytestmark = pytest.mark.integration

# Distinctive values, with characters that URL-encoding, JSON and base64 all change.
TOKEN = "TokSecret+/Zx81q=LeakCheckToken"
WRONG_TOKEN = "TokWrong+/Hh27w=LeakCheckBadToken"
PASSWORD = "PwSecret+/Qm7&?=LeakCheckPassword"
WRONG_PASSWORD = "PwWrong+/Rt4&#=LeakCheckBadPassword"
SECRET_KEY = "SkSecret+/Lp3=LeakCheckSecretKey0001"
WRONG_SECRET_KEY = "SkWrong+/Dd5=LeakCheckBadSecretKey02"
SECURITY_TOKEN = "StSecret+/Vv9=LeakCheckSecurityToken"
ACCESS_KEY = "AKLEAKCHECKVISIBLE01"  # an AK is an identifier, not a secret
USER, DOMAIN = "leak-check-user", "leak-check-domain"

ALL_SECRETS = {
    "token": TOKEN,
    "wrong token": WRONG_TOKEN,
    "IAM password": PASSWORD,
    "wrong IAM password": WRONG_PASSWORD,
    "SK": SECRET_KEY,
    "wrong SK": WRONG_SECRET_KEY,
    "security token": SECURITY_TOKEN,
}

Auth = Callable[[FakeApi], dict[str, str]]
# mode -> (working credentials, credentials that cannot work)
MODES: dict[str, tuple[Auth, Auth]] = {
    "token": (lambda fake: token_auth(TOKEN), lambda fake: token_auth(WRONG_TOKEN)),
    "iam": (
        lambda fake: iam_auth(fake, USER, PASSWORD, DOMAIN),
        lambda fake: iam_auth(fake, USER, WRONG_PASSWORD, DOMAIN),
    ),
    "aksk-temporary": (
        lambda fake: aksk_auth(ACCESS_KEY, SECRET_KEY, SECURITY_TOKEN),
        lambda fake: aksk_auth(ACCESS_KEY, WRONG_SECRET_KEY, SECURITY_TOKEN),
    ),
}


def fake_config() -> FakeConfig:
    return FakeConfig(
        shares=2,
        tasks_per_share=150,
        seed=31,
        deleting_seconds=0.0,
        latency_ms=10,
        tokens=[TOKEN],
        iam_users=[{"name": USER, "password": PASSWORD, "domain": DOMAIN}],
        aksk={ACCESS_KEY: SECRET_KEY},
        security_tokens={ACCESS_KEY: SECURITY_TOKEN},
    )


class Capture:
    """Everything that left the processes' memory, by place."""

    def __init__(self) -> None:
        self.places: dict[str, str] = {}

    def add(self, name: str, text: str) -> None:
        assert name not in self.places, name
        self.places[name] = text

    def cli(self, name: str, result: Any) -> Any:
        self.add(f"{name} (CLI stdout)", result.stdout)
        self.add(f"{name} (CLI stderr)", result.stderr)
        return result

    def redis(self, name: str, dump: RedisDump) -> RedisDump:
        self.add(f"Redis {name}", dump.text)
        return dump


def _unacked_dump(url: str) -> RedisDump | None:
    client = redis.Redis.from_url(url)
    try:
        if not client.hlen("unacked"):
            return None
    finally:
        client.close()
    dump = dump_redis(url)
    return dump if dump.entries.get("unacked", ("", []))[1] else None


@pytest.mark.parametrize("mode", list(MODES))
def test_no_secret_leaves_memory(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str) -> None:
    good, bad = MODES[mode]
    capture = Capture()
    fake = FakeApi(fake_config()).start()
    cluster = AuthCluster(
        redis_url=redis_url,
        fake=fake,
        tmp=tmp_path,
        settings={
            "SFS_CLEANUP_LOG_LEVEL": "DEBUG",
            "SFS_CLEANUP_LOG_FORMAT": "json",
            "SFS_CLEANUP_RATE_LIMIT": "60",  # a run of a few seconds: time to see jobs unacknowledged
            "SFS_CLEANUP_BATCH_SIZE": "20",
            "SFS_CLEANUP_BATCH_CONCURRENCY": "4",
        },
    )
    cluster.auth = good(fake)
    try:
        with PubSubRecorder(redis_url) as pubsub:
            # 1. Plan with no worker running: the jobs wait in the broker's list, as sent.
            planned = capture.cli("plan", cluster.cli("purge", check=True))
            run_id = planned.stdout.strip().splitlines()[-1]
            queued = capture.redis("with jobs queued", dump_redis(redis_url))
            kind, messages = queued.entries["sfs.delete"]
            assert kind == "list" and any(run_id in m and "sfs.purge_batch" in m for m in messages)

            # 2. Workers take them: the unacknowledged jobs are in kombu's hash meanwhile.
            cluster.start_worker("w1", concurrency=2)
            during = poll(lambda: _unacked_dump(redis_url), timeout=60)
            assert during is not None, "never saw a job unacknowledged"
            capture.redis("with jobs running", during)
            assert any(run_id in value for value in during.entries["unacked"][1])
            followed = capture.cli("follow", cluster.cli("runs", "show", run_id, "--wait", "--json", check=True))
            report = json.loads(followed.stdout)
            assert report["status"] == "finished", report
            assert report["outcomes"]["deleted"] == report["selected"] == fake.stats()["deletes_accepted"] > 100
            capture.cli("export", cluster.cli("audit", "export", run_id, check=True))
            after = capture.redis("after the run", dump_redis(redis_url))

            # 3. Credentials that cannot work: the CLI's own listing, then a run the workers stop.
            cluster.stop()
            cluster.auth = bad(fake)
            capture.cli("refused listing", cluster.cli("purge", "--wait", "--json", timeout=120))
            manifest = tmp_path / "tasks.jsonl"
            fake.load_tasks([{"share_id": fake.share_ids[0], **t} for t in _fresh_tasks(30)])
            write_manifest(fake, manifest)
            cluster.start_worker("w2", concurrency=2)
            refused = capture.cli(
                "refused run", cluster.cli("purge", "--manifest", str(manifest), "--wait", "--json", timeout=120)
            )
            refused_report = json.loads(refused.stdout.strip().splitlines()[-1])
            assert refused_report["status"] == "aborted", refused_report
            assert refused.returncode == 4
            capture.add("refused run: reason", refused_report["reason"])
            capture.cli("refused export", cluster.cli("audit", "export", refused_report["run_id"], check=True))
            capture.redis("after the refused run", dump_redis(redis_url))
            cluster.stop()
        capture.add("pub/sub messages (Celery events)", pubsub.text)
        assert any("task-" in m for m in pubsub.messages), "no Celery event captured"

        for log in sorted(tmp_path.glob("*.log")):
            capture.add(f"worker log {log.name}", log.read_text(errors="replace"))
        worker_logs = "".join(v for k, v in capture.places.items() if k.startswith("worker log"))
        assert '"level": "debug"' in worker_logs, "workers did not log at DEBUG"

        capsys.readouterr()
        capture.add("exception texts", _exception_texts(mode, fake, cluster))
        logged = capsys.readouterr()  # what this process logged meanwhile (a refused login's warning)
        assert "iam login refused" in logged.out + logged.err
        capture.add("in-process log output", logged.out + logged.err)

        secrets = dict(ALL_SECRETS)
        tokens = issued_tokens(fake)
        if mode == "iam":
            assert tokens, "the fake IAM issued no token"
            _assert_cache_is_encrypted(after, tokens, fake)
        secrets.update({f"issued IAM token #{n}": token for n, token in enumerate(tokens)})
    finally:
        cluster.stop()
        fake.stop()

    sizes = {name: len(text) for name, text in capture.places.items()}
    print(f"{mode}: checked {len(secrets)} secrets in {len(sizes)} places, {sum(sizes.values())} chars")
    print(f"  Redis key types after the run: {after.types()}")
    leaks = find_leaks(secrets, capture.places)
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)


def _fresh_tasks(n: int) -> list[dict[str, str]]:
    """Finished tasks, old enough for the default policy, not yet deleted."""
    return [
        {
            "task_id": f"{0xABC0000 + i:032x}",
            "type": "export",
            "status": "SUCCESS",
            "start_time": "2024-01-01T00:00:00",
            "end_time": "2024-01-01T01:00:00",
        }
        for i in range(n)
    ]


def _assert_cache_is_encrypted(dump: RedisDump, tokens: list[str], fake: FakeApi) -> None:
    """The shared IAM token is in Redis, but only as AES-GCM ciphertext under its key."""
    import httpx
    from pydantic import SecretStr

    from worker.api.auth import IamLogin, IamTokenProvider

    cached = [(key, values) for key, (kind, values) in dump.entries.items() if key.startswith("sfs:auth:token:")]
    blobs = {key: values[0] for key, values in cached if not key.endswith((":lock", ":failed"))}
    assert len(blobs) == 1, sorted(dump.entries)
    (key, blob) = next(iter(blobs.items()))
    assert blob.startswith("v1.")

    def provider(password: str) -> IamTokenProvider:
        login = IamLogin(fake.url, USER, SecretStr(password), DOMAIN, fake.project_id)
        return IamTokenProvider(login, http=httpx.Client())

    right = provider(PASSWORD)
    assert right.cache_key == key
    assert right.decrypt(blob).value in tokens  # it is a token the fake issued ...
    with pytest.raises(ValueError, match="cannot be decrypted"):
        provider(WRONG_PASSWORD).decrypt(blob)  # ... readable only with the password


def _exception_texts(mode: str, fake: FakeApi, cluster: AuthCluster) -> str:
    """Errors and reprs built in this process with every secret configured."""
    import httpx
    from pydantic import SecretStr

    from worker.api.auth import AuthError, IamLogin, IamTokenProvider, build_auth

    texts: list[str] = []
    env = {k.removeprefix("SFS_CLEANUP_").lower(): v for k, v in cluster.env().items() if k.startswith("SFS_CLEANUP_")}
    for credentials in MODES[mode]:
        values = {k.removeprefix("SFS_CLEANUP_").lower(): v for k, v in credentials(fake).items()}
        settings = load_settings(**{**env, **values})
        auth = build_auth(settings)
        texts += [repr(settings), str(settings), settings.model_dump_json(), repr(auth), str(vars(auth))]
    login = IamLogin(fake.url, USER, SecretStr(WRONG_PASSWORD), DOMAIN, fake.project_id)
    with httpx.Client() as http:
        provider = IamTokenProvider(login, http=http)
        texts += [repr(login), repr(provider)]
        with pytest.raises(AuthError) as refused:
            provider.token()
    texts += [str(refused.value), repr(refused.value), repr(refused.value.args)]
    assert "SFS_CLEANUP_IAM_PASSWORD" in str(refused.value)
    return "\n".join(texts)


def test_the_leak_detector_finds_every_encoded_form() -> None:
    """The detector itself: a secret buried in base64 (any alignment), URL-encoded, JSON or hex
    text is found; unrelated text is not."""
    secret = SECRET_KEY
    for shift in range(6):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            blob = encode(b"x" * shift + b'{"sk": "' + secret.encode() + b'"}').decode()
            assert find_leaks({"sk": secret}, {"blob": f"value={blob};"}), (shift, encode)
    for text in (
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        urllib.parse.quote(secret, safe="").lower(),
        json.dumps({"k": secret}),
        secret.encode().hex().upper(),
    ):
        assert find_leaks({"sk": secret}, {"text": f"prefix {text} suffix"}), text
    assert not find_leaks({"sk": secret}, {"text": "SkSecret+/Lp3=LeakCheck" + "x" * 40})
