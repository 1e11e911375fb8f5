"""The IAM token shared through a real Redis by real processes, against a local IAM mock."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from worker.api.auth import AuthError, IamAuth, IamLogin, IamTokenProvider, build_auth
from worker.settings import Settings

pytestmark = pytest.mark.integration

PROJECT = "0123456789abcdef0123456789abcdef"
PASSWORD = "Correct-Horse-7"
USER, DOMAIN = "robot", "acme"


class IamMock(ThreadingHTTPServer):
    """IAM's ``POST /v3/auth/tokens`` on 127.0.0.1, counting logins; slow on purpose so that
    concurrent workers really overlap with the one logging in."""

    daemon_threads = True

    def __init__(self, lifetime: float = 86400.0, delay: float = 0.3) -> None:
        super().__init__(("127.0.0.1", 0), _IamHandler)
        self.lifetime = lifetime
        self.delay = delay
        self.logins = 0
        self.tokens: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _IamHandler(BaseHTTPRequestHandler):
    server: IamMock

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v3/auth/tokens"
        time.sleep(self.server.delay)
        user = body["auth"]["identity"]["password"]["user"]
        with self.server.lock:
            self.server.logins += 1
            n = self.server.logins
        if user["password"] != PASSWORD:
            self._answer(401, {"error": {"code": 401, "message": "The username or password is wrong."}})
            return
        token = f"MIIT-token-{n}-" + hashlib.sha256(str(n).encode()).hexdigest()
        with self.server.lock:
            self.server.tokens.append(token)
        now = time.time()
        fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
        times = {
            "issued_at": datetime.fromtimestamp(now, UTC).strftime(fmt),
            "expires_at": datetime.fromtimestamp(now + self.server.lifetime, UTC).strftime(fmt),
        }
        self._answer(201, {"token": times}, token)

    def _answer(self, status: int, body: dict[str, Any], token: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if token:
            self.send_header("X-Subject-Token", token)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def iam() -> Iterator[IamMock]:
    server = IamMock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def make_settings(iam_url: str, redis_url: str, password: str = PASSWORD) -> Settings:
    return Settings(
        _env_file=None,
        redis_url=redis_url,
        key_prefix="it",
        api_endpoint="http://127.0.0.1:9",
        project_id=PROJECT,
        iam_endpoint=iam_url,
        iam_user=USER,
        iam_password=password,
        iam_domain=DOMAIN,
    )


def make_provider(iam_url: str, redis_url: str, password: str = PASSWORD, **kwargs: Any) -> IamTokenProvider:
    login = IamLogin(endpoint=iam_url, user=USER, password=SecretStr(password), domain=DOMAIN, project_id=PROJECT)
    return IamTokenProvider(
        login, http=httpx.Client(timeout=10), redis_client=redis.Redis.from_url(redis_url), key_prefix="it", **kwargs
    )


def _worker(iam_url: str, redis_url: str, barrier: Any, results: Any) -> None:
    """One worker process: the real build_auth, a real API call through a mock transport."""
    settings = make_settings(iam_url, redis_url)
    auth = build_auth(settings, redis.Redis.from_url(redis_url))
    seen: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["X-Auth-Token"])
        return httpx.Response(202)

    barrier.wait()
    with httpx.Client(transport=httpx.MockTransport(api), auth=auth) as client:
        status = client.delete(f"http://127.0.0.1:9/v1/{PROJECT}/sfs-turbo/s1/hpc-cache/task/t1").status_code
    results.put((status, seen[0]))


def run_workers(iam: IamMock, redis_url: str, n: int) -> list[tuple[int, str]]:
    # A forkserver (no threads, unlike this process with its IAM mock) that has imported the
    # code once: the workers then start together in a fraction of a second, as on a real host.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["worker.api.auth", __name__])
    barrier = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(iam.url, redis_url, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [results.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return out


def test_many_processes_log_in_once(iam: IamMock, redis_url: str, redis_client: redis.Redis) -> None:
    results = run_workers(iam, redis_url, 12)

    assert iam.logins == 1
    token = iam.tokens[0]
    assert results == [(202, token)] * 12

    identity = "|".join([USER, DOMAIN, PROJECT, iam.url])
    key = f"it:auth:token:{hashlib.sha256(identity.encode()).hexdigest()[:16]}"
    assert redis_client.keys("it:auth:*") == [key]  # the lock is gone, no failure recorded
    stored = redis_client.get(key)
    assert isinstance(stored, str)
    assert token not in stored
    assert token.encode().hex() not in stored
    ttl = redis_client.ttl(key)
    assert 86400 - 120 < ttl <= 86400  # ends with the token

    assert make_provider(iam.url, redis_url).decrypt(stored).value == token
    with pytest.raises(ValueError, match="cannot be decrypted"):
        make_provider(iam.url, redis_url, password="Wrong-Horse-7").decrypt(stored)


def test_expired_cached_token_is_renewed_once(iam: IamMock, redis_url: str, redis_client: redis.Redis) -> None:
    # A token that expired but is still in Redis (its writer's clock was behind, or its TTL was
    # set by an older version): every worker must see it as expired, and only one log in.
    p = make_provider(iam.url, redis_url)
    now = time.time()
    from worker.api.auth import CachedToken

    stale = CachedToken("MIIT-stale-token", exp=now - 10, iat=now - 86410, iam_expires_at="then")
    redis_client.set(p.cache_key, p._encrypt(stale))

    results = run_workers(iam, redis_url, 8)
    assert iam.logins == 1
    assert results == [(202, iam.tokens[0])] * 8


def test_short_lived_tokens_are_renewed_mid_run(iam: IamMock, redis_url: str) -> None:
    # Tokens of 3 s are renewed when 1 s is left (a third of their life), by one of the four
    # providers (as four processes would), while all keep working without a gap.
    iam.lifetime = 3.0
    iam.delay = 0.05
    providers = [make_provider(iam.url, redis_url) for _ in range(4)]
    seen: set[str] = set()
    stop = time.monotonic() + 3.2
    while time.monotonic() < stop:
        for p in providers:
            seen.add(p.token())
        time.sleep(0.02)
    assert iam.logins == 2
    assert seen == set(iam.tokens)


def test_rejected_token_replaced_only_if_still_the_same(iam: IamMock, redis_url: str) -> None:
    a, b = make_provider(iam.url, redis_url), make_provider(iam.url, redis_url)
    first = a.token()
    assert b.token() == first
    assert iam.logins == 1
    # Both get 401 APIGW.0307 for the first token; a renews first, b finds a's new token.
    second = a.renew(rejected=first)
    assert b.renew(rejected=first) == second != first
    assert iam.logins == 2
    # The API refuses the renewed token too: no worker logs in again for a while.
    c = make_provider(iam.url, redis_url)
    assert c.token() == second
    assert c.renew(rejected=second) == second
    assert b.renew(rejected=second) == second
    assert iam.logins == 2


def test_refused_login_is_remembered_by_the_fleet(iam: IamMock, redis_url: str, redis_client: redis.Redis) -> None:
    wrong = "Wrong-Horse-7"
    with pytest.raises(AuthError) as info:
        make_provider(iam.url, redis_url, password=wrong).token()
    assert wrong not in str(info.value) and "SFS_CLEANUP_IAM_PASSWORD" in str(info.value)
    assert iam.logins == 1
    # Another worker with the same wrong password does not ask IAM again ...
    with pytest.raises(AuthError):
        make_provider(iam.url, redis_url, password=wrong).token()
    assert iam.logins == 1
    stored = "".join(str(v) for v in redis_client.mget(redis_client.keys("it:auth:*")))
    assert wrong not in stored
    # ... but one started with the corrected password does.
    assert make_provider(iam.url, redis_url).token() == iam.tokens[0]
    assert iam.logins == 2


def test_build_auth_with_redis_shares_between_instances(iam: IamMock, redis_url: str) -> None:
    auths = [build_auth(make_settings(iam.url, redis_url), redis.Redis.from_url(redis_url)) for _ in range(3)]
    tokens = set()
    for auth in auths:
        assert isinstance(auth, IamAuth)
        tokens.add(auth.provider.token())
    assert len(tokens) == 1
    assert iam.logins == 1
