"""A Redis primary, its replicas and three Sentinels on loopback ports: a failover to test against.

Each process is a real ``redis-server`` (``--sentinel`` for the Sentinels) in a temporary
directory. Timings are short (``down-after-milliseconds`` 1000) so a failover takes seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from sandbox.redis_server import RedisServer, find_redis_server, free_port

MASTER = "sfs-primary"
#: Replication starts at once (the default waits 5 s to batch diskless syncs).
REPLICATION_ARGS = ("--repl-diskless-sync-delay", "0")


@dataclass
class SentinelProcess:
    """One ``redis-server --sentinel`` watching ``MASTER``."""

    primary_port: int
    down_after_ms: int = 1000
    failover_timeout_ms: int = 5000
    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sfs-sentinel-")))
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelProcess:
        conf = self.workdir / "sentinel.conf"  # Sentinel rewrites its config: a file of its own
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\nlogfile {self.workdir / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        self.proc = subprocess.Popen(
            [find_redis_server(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"Sentinel on {self.port} did not start: {self.log()[-2000:]}") from None
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True)

    def primary_port_now(self) -> int | None:
        try:
            addr = self.client().sentinel_get_master_addr_by_name(MASTER)
        except redis.RedisError:
            return None
        return int(addr[1]) if addr else None

    def log(self) -> str:
        path = self.workdir / "sentinel.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class SentinelGroup:
    """A primary, ``replicas`` replicas of it and three Sentinels, all on 127.0.0.1."""

    replicas: int = 1
    primary: RedisServer = field(init=False)
    replica_servers: list[RedisServer] = field(default_factory=list)
    sentinels: list[SentinelProcess] = field(default_factory=list)

    def start(self) -> SentinelGroup:
        try:
            self.primary = RedisServer(extra_args=REPLICATION_ARGS).start()
            for _ in range(self.replicas):
                args = (*REPLICATION_ARGS, "--replicaof", "127.0.0.1", str(self.primary.port))
                self.replica_servers.append(RedisServer(extra_args=args).start())
            self.wait_replicas_online(self.primary.port, self.replicas)
            for _ in range(3):
                self.sentinels.append(SentinelProcess(self.primary.port).start())
            self._wait_sentinels_agree()
        except BaseException:
            self.cleanup()
            raise
        return self

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, *self.replica_servers]

    def settings(self, **extra: str) -> dict[str, str]:
        """The ``SFS_CLEANUP_`` settings that reach this group through its Sentinels."""
        return {
            "SFS_CLEANUP_REDIS_SENTINELS": ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels),
            "SFS_CLEANUP_REDIS_SENTINEL_MASTER": MASTER,
        } | extra

    def primary_port_now(self) -> int | None:
        """The primary's port as the Sentinels report it (the first that answers)."""
        for sentinel in self.sentinels:
            port = sentinel.primary_port_now()
            if port is not None:
                return port
        return None

    def server_on(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def wait_failover(self, old_port: int, timeout: float = 60) -> RedisServer:
        """The replica promoted after ``old_port`` went away, once it takes writes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            port = self.primary_port_now()
            if port is not None and port != old_port:
                client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
                try:
                    if client.info("replication")["role"] == "master":
                        return self.server_on(port)
                except redis.RedisError:
                    pass
            time.sleep(0.05)
        logs = "\n".join(s.log()[-1500:] for s in self.sentinels)
        raise TimeoutError(f"no failover within {timeout} s:\n{logs}")

    @staticmethod
    def wait_replicas_online(port: int, count: int, timeout: float = 30) -> None:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = client.info("replication")
            online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            if len([r for r in online if r.get("state") == "online"]) >= count:
                return
            time.sleep(0.05)
        raise TimeoutError(f"{count} replica(s) of {port} not online within {timeout} s")

    def _wait_sentinels_agree(self, timeout: float = 30) -> None:
        """Every Sentinel knows the replicas and the other Sentinels (else a failover cannot start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = True
            for sentinel in self.sentinels:
                try:
                    master = sentinel.client().sentinel_master(MASTER)
                except redis.RedisError:
                    ready = False
                    break
                if int(master["num-other-sentinels"]) < 2 or int(master["num-slaves"]) < self.replicas:
                    ready = False
            if ready:
                return
            time.sleep(0.1)
        raise TimeoutError("the Sentinels did not discover each other and the replicas")

    def cleanup(self) -> None:
        for sentinel in self.sentinels:
            sentinel.cleanup()
        for server in [getattr(self, "primary", None), *self.replica_servers]:
            if server is not None:
                server.cleanup()

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
