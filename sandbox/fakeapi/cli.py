"""``sfs-cleanup fake-api``: run the fake SFS Turbo API in the foreground for demos and benchmarks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sandbox.fakeapi import seed
from sandbox.fakeapi.config import DEFAULT_TOKEN, ConfigError, FakeConfig, apply_patch, is_loopback

if TYPE_CHECKING:
    from sandbox.fakeapi.service import FakeService

# CLI option -> config field, for the options that map one to one.
_FIELDS = {
    "port": "port",
    "host": "host",
    "shares": "shares",
    "tasks_per_share": "tasks_per_share",
    "seed": "seed",
    "project_id": "project_id",
    "latency_ms": "latency_ms",
    "error_ratio": "error_ratio",
    "rate_limit": "rate_limit_rps",
    "retry_after": "retry_after",
    "deleting_seconds": "deleting_seconds",
}


def fake_api(
    ctx: typer.Context,
    *,
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8099,
    host: Annotated[str, typer.Option(help="Loopback address to listen on (127.0.0.0/8 or ::1 only).")] = ("127.0.0.1"),
    shares: Annotated[int, typer.Option(help="File systems (shares) to generate.")] = 4,
    tasks_per_share: Annotated[int, typer.Option(help="Tasks generated per share.")] = 500,
    seed_value: Annotated[int, typer.Option("--seed", help="Seed of the generated inventory.")] = 7,
    project_id: Annotated[str | None, typer.Option(help="Project ID (32 hex); default: derived from --seed.")] = None,
    latency_ms: Annotated[float, typer.Option(help="Latency added to every API call, in ms.")] = 0.0,
    error_ratio: Annotated[float, typer.Option(help="Fraction of DELETEs answered 500 SFS.TURBO.0005.")] = 0.0,
    rate_limit: Annotated[
        float, typer.Option(help="API calls per sliding second before 429 APIGW.0308 (0: no limit).")
    ] = 0.0,
    retry_after: Annotated[float | None, typer.Option(help="Send `Retry-After: N` (seconds) with every 429.")] = None,
    deleting_seconds: Annotated[
        float, typer.Option(help="How long a deleted task shows DELETING before it is gone.")
    ] = 2.0,
    token: Annotated[
        list[str] | None, typer.Option(help=f"An accepted X-Auth-Token (repeatable; default {DEFAULT_TOKEN}).")
    ] = None,
    ak: Annotated[str | None, typer.Option(help="An access key accepted for SDK-HMAC-SHA256 signing.")] = None,
    sk: Annotated[str | None, typer.Option(help="The secret key of --ak.")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Accept every request without credentials.")] = False,
    seed_file: Annotated[
        Path | None, typer.Option(help="Serve the tasks of this JSON-lines file instead of generating them.")
    ] = None,
    dump_seed: Annotated[
        Path | None, typer.Option(help="Write the served inventory to this JSON-lines file at start.")
    ] = None,
    config_file: Annotated[
        Path | None, typer.Option(help="A JSON file of FakeConfig fields; options given here override it.")
    ] = None,
    ready_file: Annotated[Path | None, typer.Option(hidden=True)] = None,
    quiet: Annotated[bool, typer.Option(hidden=True)] = False,
) -> None:
    """Serve a fake SFS Turbo HPC-cache task API (and IAM token login) on a loopback port until Ctrl-C."""
    if not is_loopback(host):
        raise typer.BadParameter(
            f"{host!r} is not a loopback address; the fake only listens on 127.0.0.0/8 or ::1", param_hint="--host"
        )
    if (ak is None) != (sk is None):
        raise typer.BadParameter("give --ak and --sk together", param_hint="--ak/--sk")
    values: dict[str, Any] = {**locals(), "seed": seed_value}
    try:
        config = FakeConfig.from_json_file(config_file) if config_file else FakeConfig()
        patch = {
            field: values[option]
            for option, field in _FIELDS.items()
            if config_file is None or _given(ctx, "seed_value" if option == "seed" else option)
        }
        if token:
            patch["tokens"] = list(token)
        if ak is not None and sk is not None:
            patch["aksk"] = {**config.aksk, ak: sk}
        if no_auth:
            patch["auth_required"] = False
        if seed_file is not None:
            patch["seed_file"] = str(seed_file)
        config = apply_patch(config, patch, runtime=False)
        # Imported here: the server pulls in aiohttp, which other commands need not load.
        from sandbox.fakeapi.server import build_inventory, serve

        inventory = build_inventory(config)
    except (ConfigError, OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    if dump_seed is not None:
        seed.dump(inventory, dump_seed)

    def ready(url: str, service: FakeService) -> None:
        info = {"url": url, "pid": os.getpid(), **service.info()}
        if ready_file is not None:
            partial = ready_file.with_suffix(".partial")
            partial.write_text(json.dumps(info), encoding="utf-8")
            partial.replace(ready_file)  # atomic: the parent never reads half a file
        if not quiet:
            _banner(url, config, info, dump_seed)

    serve(config, inventory=inventory, on_ready=ready)


def _given(ctx: typer.Context, name: str) -> bool:
    # Compared by name: typer may ship its own copy of click's ParameterSource enum.
    source = ctx.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"


def _banner(url: str, config: FakeConfig, info: dict[str, Any], dump_seed: Path | None) -> None:
    lines = [
        f"Fake SFS Turbo API on {url} (Ctrl-C to stop)",
        f"  SFS_CLEANUP_API_ENDPOINT={url}",
        f"  SFS_CLEANUP_PROJECT_ID={info['project_id']}",
        f"  SFS_CLEANUP_SHARE_IDS={','.join(info['share_ids'])}",
    ]
    if not config.auth_required:
        lines.append("  authentication: off (any or no credentials are accepted)")
    else:
        if config.tokens:
            lines.append(f"  SFS_CLEANUP_AUTH_TOKEN={config.tokens[0]}")
        for user in config.iam_users[:1]:
            lines.append(
                f"  IAM login: SFS_CLEANUP_IAM_ENDPOINT={url} SFS_CLEANUP_IAM_USER={user['name']} "
                f"SFS_CLEANUP_IAM_PASSWORD={user['password']} SFS_CLEANUP_IAM_DOMAIN={user['domain']}"
            )
        for access_key in config.aksk:
            lines.append(f"  AK/SK: SFS_CLEANUP_ACCESS_KEY={access_key} (secret key as given)")
    if dump_seed is not None:
        lines.append(f"  inventory written to {dump_seed}")
    typer.echo("\n".join(lines))
