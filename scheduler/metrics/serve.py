"""Serving the metrics: a registry, an HTTP server, and the ``sfs-cleanup metrics`` command."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Annotated, Any

import typer
from prometheus_client import CollectorRegistry, start_http_server

from scheduler.metrics.collector import FleetCollector
from scheduler.metrics.families import DEFAULT_PORT
from worker.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    pass


def registry_for(settings: Settings, **collector_args: Any) -> CollectorRegistry:
    """A registry holding only the fleet collector (no process metrics of the serving process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(settings, **collector_args))
    return registry


def serve_metrics(settings: Settings, port: int, addr: str = "127.0.0.1") -> tuple[Any, threading.Thread]:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread; returns (server, thread).

    ``port=0`` picks a free port: read it from ``server.server_port``.
    """
    server, thread = start_http_server(port, addr=addr, registry=registry_for(settings))
    return server, thread


def metrics(
    port: Annotated[
        int | None, typer.Option(help=f"Port to serve on (default: SFS_CLEANUP_METRICS_PORT, else {DEFAULT_PORT}).")
    ] = None,
    address: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 for every interface.")] = "127.0.0.1",
) -> None:
    """Serve Prometheus metrics (runs, outcomes, retries, 429s, queue depth, limiter) read from Redis."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        for line in exc.lines:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None
    chosen = port if port is not None else (settings.metrics_port or DEFAULT_PORT)
    try:
        server, _ = serve_metrics(settings, chosen, address)
    except OSError as exc:
        typer.echo(f"error: cannot listen on {address}:{chosen}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"serving metrics on http://{address}:{server.server_port}/metrics")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
