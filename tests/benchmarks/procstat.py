"""CPU time and memory of process trees, read from ``/proc`` (Linux only).

Celery's prefork pool may fork its children from a thread other than the main one, and
``/proc/PID/task/PID/children`` lists only the children of that one thread; so a tree is found
by walking every ``/proc/*/stat`` and following parent PIDs instead.

CPU of a tree over an interval is the difference of two snapshots, each the sum over the live
processes of the tree of ``utime + stime + cutime + cstime`` (``cutime`` covers the children
that ended and were reaped inside the tree). Threads are included: ``/proc/PID/stat`` of a
process adds up all of its threads.

For one child that has ended, :func:`run_measured` reads its own resource usage with
``os.wait4`` (user and system CPU and ``ru_maxrss``, the peak RSS of the child and of the
descendants it waited for), which is exact and needs no sampling.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True, slots=True)
class Stat:
    pid: int
    ppid: int
    cpu_s: float  # own user + system, all threads
    children_cpu_s: float  # reaped children's user + system
    rss_kb: int
    sys_s: float = 0.0  # the system part of both


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` from field 3 (state) on: field N is item N - 3.
    ``None`` when the process is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def read_stat(pid: int) -> Stat | None:
    """One process's ``/proc/PID/stat``; ``None`` when it is gone."""
    rest = stat_fields(pid)
    if rest is None:
        return None
    utime, stime, cutime, cstime = (int(rest[i]) for i in (11, 12, 13, 14))
    return Stat(
        pid=pid,
        ppid=int(rest[1]),
        cpu_s=(utime + stime) / CLK_TCK,
        children_cpu_s=(cutime + cstime) / CLK_TCK,
        rss_kb=int(rest[21]) * PAGE_KB,
        sys_s=(stime + cstime) / CLK_TCK,
    )


def all_stats() -> dict[int, Stat]:
    stats: dict[int, Stat] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def tree(root: int, stats: Mapping[int, Stat] | None = None) -> list[Stat]:
    """The live processes of the tree rooted at ``root`` (the root first), by parent PIDs."""
    stats = all_stats() if stats is None else stats
    if root not in stats:
        return []
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: list[Stat] = []
    todo = [root]
    seen: set[int] = set()
    while todo and len(found) < 100_000:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        found.append(stats[pid])
        todo.extend(children.get(pid, ()))
    return found


def proc_info(path: str, key: str) -> str:
    """The value of the first ``key: value`` line of a ``/proc`` file; "" when absent or unreadable."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def proc_kb(path: str, key: str) -> int:
    """A ``kB`` value of a ``/proc`` file; 0 when absent or unreadable."""
    value = proc_info(path, key)
    return int(value.split()[0]) if value else 0


def status_kb(pid: int, name: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmHWM``, ``VmRSS``); 0 when absent or gone."""
    return proc_kb(f"/proc/{pid}/status", name + ":")


@dataclass
class TreeSnapshot:
    cpu_s: float
    sys_s: float
    pids: list[int]
    rss_kb: int  # sum of the current RSS of the tree's processes
    hwm_kb: int  # sum of each process's own peak RSS (VmHWM)


def snapshot(root: int, stats: Mapping[int, Stat] | None = None) -> TreeSnapshot:
    procs = tree(root, stats)
    return TreeSnapshot(
        cpu_s=sum(p.cpu_s + p.children_cpu_s for p in procs),
        sys_s=sum(p.sys_s for p in procs),
        pids=[p.pid for p in procs],
        rss_kb=sum(p.rss_kb for p in procs),
        hwm_kb=sum(status_kb(p.pid, "VmHWM") for p in procs),
    )


@dataclass
class CpuMeter:
    """CPU seconds of named process trees over an interval: ``start()`` ... ``stop()``.

    A background sampler also keeps the largest summed RSS each tree had (``peak_rss_kb``) and
    the last CPU reading of every process, so a process that ended unreaped still counts.
    """

    roots: dict[str, int]
    interval_s: float = 0.25
    start_cpu: dict[str, float] = field(default_factory=dict)
    start_sys: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    sys_s: dict[str, float] = field(default_factory=dict)  # the system-time part of cpu_s
    peak_rss_kb: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    elapsed_s: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> dict[str, TreeSnapshot]:
        stats = all_stats()
        shots = {name: snapshot(pid, stats) for name, pid in self.roots.items()}
        for name, shot in shots.items():
            self.peak_rss_kb[name] = max(self.peak_rss_kb.get(name, 0), shot.rss_kb)
        return shots

    def start(self) -> CpuMeter:
        shots = self._sample()
        self.start_cpu = {name: shot.cpu_s for name, shot in shots.items()}
        self.start_sys = {name: shot.sys_s for name, shot in shots.items()}
        self.started_at = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="cpu-meter", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.elapsed_s = time.monotonic() - self.started_at
        shots = self._sample()
        self.cpu_s = {name: max(0.0, shots[name].cpu_s - self.start_cpu.get(name, 0.0)) for name in self.roots}
        self.sys_s = {name: max(0.0, shots[name].sys_s - self.start_sys.get(name, 0.0)) for name in self.roots}
        return self.cpu_s


@dataclass
class Measured:
    """A finished child process: its exit code, output, wall time and own resource usage."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    user_s: float
    sys_s: float
    maxrss_kb: int  # the child's peak RSS (and of the descendants it waited for)
    hwm_samples_kb: int = 0  # the largest VmHWM seen while it ran (a cross-check)

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def run_measured(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 600.0,
    cwd: str | Path | None = None,
    workdir: Path | None = None,
    poll_s: float = 0.05,
) -> Measured:
    """Run ``args`` to its end and read its CPU time and peak RSS with ``os.wait4``.

    Output goes to files (``workdir``, else a temporary directory), never to pipes, so a child
    that prints a lot cannot block. On timeout the child's process group is killed and
    :class:`TimeoutError` is raised.
    """
    import signal
    import tempfile

    owned = workdir is None
    work = Path(tempfile.mkdtemp(prefix="bench-run-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    out_path, err_path = work / "stdout.txt", work / "stderr.txt"
    started = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            list(args), env=dict(env) if env is not None else None, stdout=out, stderr=err,
            cwd=cwd, start_new_session=True,
        )  # fmt: skip
    hwm = 0
    deadline = started + timeout_s
    status = rusage = None
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            raise TimeoutError(f"{' '.join(args)}: still running after {timeout_s} s")
        hwm = max(hwm, status_kb(proc.pid, "VmHWM"))
        time.sleep(poll_s)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    measured = Measured(
        args=list(args),
        returncode=proc.returncode,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        wall_s=wall,
        user_s=rusage.ru_utime,
        sys_s=rusage.ru_stime,
        maxrss_kb=rusage.ru_maxrss,
        hwm_samples_kb=hwm,
    )
    if owned:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return measured


def per_thousand(cpu_s: float, count: int) -> float | None:
    """CPU seconds per 1,000 items, or ``None`` when nothing was counted."""
    return round(cpu_s * 1000 / count, 3) if count > 0 else None


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def cpu_model() -> str:
    return proc_info("/proc/cpuinfo", "model name")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import platform

    mem_kb = proc_kb("/proc/meminfo", "MemTotal:")
    return {
        "cpus": cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average": load_average(),
    }
