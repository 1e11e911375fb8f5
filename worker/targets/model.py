"""Targets: many projects, regions and accounts in one run (``SFS_CLEANUP_TARGETS_FILE``).

::

    targets:
      - name: prod-sg                       # a slug, unique in the file
        region: ap-southeast-1              # endpoint https://sfs-turbo.{region}.myhuaweicloud.com
        project_id: 0123456789abcdef0123456789abcdef
        credentials: {env: {access_key: SG_AK, secret_key: SG_SK}}
        name_pattern: "hpc-*"               # no shares listed: every available one found (discovery)
        rate: 10                            # this target's limiter bucket (default SFS_CLEANUP_RATE_LIMIT)
      - name: other-account
        region: ap-southeast-1
        project_id: fedcba9876543210fedcba9876543210
        credentials: {assume: {domain: other-account, agency: sfs-cleanup}}
        shares: [7d4f5a9e-1c2b-4d3e-8f60-0a1b2c3d4e5f]

The file names credentials, never holds them: ``env`` names environment variables, ``file`` a
mounted secret file (YAML or JSON with the same keys), ``agency`` is the instance's platform
credentials and ``assume`` an agency of another account assumed with them. A credential is
resolved in the process that uses it (:meth:`Target.settings`), from that process's own
environment and mounts, so a secret never enters the plan, a Celery message or Redis.

A target resolves to a derived :class:`~worker.settings.Settings` (its endpoint, project, shares,
credentials and rate), from which the usual client, auth, limiter and share discovery are built.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker.api.auth.base import AuthError
from worker.errors import ProblemsError
from worker.ids import explain
from worker.settings import Settings

ENDPOINT_TEMPLATE: Final = "https://sfs-turbo.{region}.myhuaweicloud.com"
IAM_TEMPLATE: Final = "https://iam.{region}.myhuaweicloud.com"
MAX_TARGETS_BYTES: Final = 1 << 20
MAX_SECRET_FILE_BYTES: Final = 64 << 10
_SLUG: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_REGION: Final = r"^[a-z0-9][a-z0-9-]{1,62}$"
_VAR: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
_GLOB: Final = re.compile(r"[A-Za-z0-9_.*?\[\]!-]{1,128}")
TargetName = Annotated[str, Field(pattern=_SLUG, description="A slug: lowercase letters, digits, '-', '_'.")]
EnvName = Annotated[str, Field(pattern=_VAR, description="The name of an environment variable (not its value).")]


class TargetsError(ProblemsError):
    """A targets file that cannot be used, one line per problem: file, target, field."""

    title = "invalid targets file"


class _Strict(BaseModel, extra="forbid", frozen=True):
    pass


class EnvKeys(_Strict):
    """Environment variables holding an AK/SK (and security token), or a token."""

    access_key: EnvName | None = None
    secret_key: EnvName | None = None
    security_token: EnvName | None = None
    token: EnvName | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> EnvKeys:
        if self.token is not None and (self.access_key or self.secret_key or self.security_token):
            raise ValueError("either token, or access_key and secret_key (and security_token), not both")
        if self.token is None and (self.access_key is None or self.secret_key is None):
            raise ValueError("needs token, or both access_key and secret_key")
        return self


class EnvCredentials(_Strict):
    env: EnvKeys


class FileCredentials(_Strict):
    file: str = Field(description="A mounted secret file (YAML or JSON) with access_key/secret_key or token.")

    @field_validator("file")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path (a mounted secret)")
        return value


class Assume(_Strict):
    domain: str = Field(min_length=1, max_length=64, description="The other account (domain) name.")
    agency: str = Field(min_length=1, max_length=64, description="The agency to assume in it.")
    iam_endpoint: str | None = Field(
        None, description="IAM for the assume-role call; default SFS_CLEANUP_AGENCY_IAM_ENDPOINT, else the region's."
    )
    duration_s: int | None = Field(None, ge=900, le=86400, description="Lifetime asked; default the setting's.")

    @field_validator("iam_endpoint")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _url_or_none(value)


class AssumeCredentials(_Strict):
    assume: Assume


_KINDS: Final = {"env": "Env", "file": "File", "assume": "Assume"}


def _credentials_kind(value: Any) -> str | None:
    """Which kind of credentials ``value`` is meant to be (its one key), so that an error names
    that kind's fields only, not every kind's."""
    if isinstance(value, str):
        return "Agency"
    if isinstance(value, dict) and len(value) == 1:
        return _KINDS.get(next(iter(value)))
    if isinstance(value, BaseModel):
        kinds: dict[type[BaseModel], str] = {
            EnvCredentials: "Env",
            FileCredentials: "File",
            AssumeCredentials: "Assume",
        }
        return kinds.get(type(value))
    return None


Credentials = Annotated[
    Annotated[Literal["agency"], Tag("Agency")]
    | Annotated[EnvCredentials, Tag("Env")]
    | Annotated[FileCredentials, Tag("File")]
    | Annotated[AssumeCredentials, Tag("Assume")],
    Discriminator(
        _credentials_kind,
        custom_error_type="credentials_kind",
        custom_error_message="must be agency, or a mapping with one key: env, file or assume",
    ),
]


class Target(_Strict):
    """One project in one region, with its credentials, shares and rate."""

    name: TargetName
    region: str = Field(pattern=_REGION, description="e.g. ap-southeast-1")
    endpoint: str | None = Field(None, description="Default: https://sfs-turbo.{region}.myhuaweicloud.com")
    project_id: str = Field(description="The project (32 hex characters in the console).")
    credentials: Credentials = Field(
        description="agency | {env: {access_key, secret_key[, security_token]} or {token}} | {file: /path} | "
        "{assume: {domain, agency}}"
    )
    shares: list[str] = Field(default_factory=list, description="Share IDs; empty: every available one found.")
    name_pattern: str | None = Field(None, description="With no shares: the glob of names to purge.")
    enterprise_project_id: str | None = Field(None, description="With no shares: only this enterprise project.")
    rate: float | None = Field(None, gt=0, le=100000, description="This target's requests per second.")
    burst: int | None = Field(None, ge=1, le=1000, description="This target's burst.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return _url_or_none(value)

    @field_validator("project_id", "enterprise_project_id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        if value is not None and (reason := explain(value)):
            raise ValueError(f"ID {reason}")
        return value

    @field_validator("shares")
    @classmethod
    def _shares(cls, value: list[str]) -> list[str]:
        for item in value:
            if reason := explain(item):
                raise ValueError(f"share ID {item[:40]!r} {reason}")
        return list(dict.fromkeys(value))

    @field_validator("name_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None and not _GLOB.fullmatch(value):
            raise ValueError("must be a glob of letters, digits, '-', '_', '.', '*', '?' and [...] (1-128)")
        return value

    @field_validator("name_pattern", "enterprise_project_id", mode="after")
    @classmethod
    def _only_with_discovery(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("shares"):
            raise ValueError("selects among the shares found: not with a shares list")
        return value

    @property
    def api_endpoint(self) -> str:
        return self.endpoint or ENDPOINT_TEMPLATE.format(region=self.region)

    @property
    def credentials_kind(self) -> str:
        creds = self.credentials
        if isinstance(creds, str):
            return creds
        if isinstance(creds, EnvCredentials):
            return "env-token" if creds.env.token else "env-aksk"
        return "file" if isinstance(creds, FileCredentials) else "assume"

    def describe(self) -> dict[str, Any]:
        """What may be shown, logged or stored of the target: never a secret (there is none in it)."""
        return {
            "region": self.region,
            "endpoint": self.api_endpoint,
            "project_id": self.project_id,
            "credentials": self.credentials_kind,
            "shares": list(self.shares) or None,
            "name_pattern": self.name_pattern,
            "enterprise_project_id": self.enterprise_project_id,
            "rate": self.rate,
            "burst": self.burst,
        }

    def settings(self, base: Settings, environ: Mapping[str, str] | None = None) -> Settings:
        """``base`` (a :class:`~worker.settings.Settings`) for this target, credentials resolved here.

        Raises :class:`AuthError` (naming the target and the variable or file, never a value)
        when a credential is missing in this process.
        """
        update: dict[str, Any] = {
            "api_endpoint": self.api_endpoint.rstrip("/"),
            "project_id": self.project_id,
            "share_ids": list(self.shares),
            "share_name_pattern": self.name_pattern or base.share_name_pattern,
            "share_enterprise_project_id": self.enterprise_project_id
            if self.enterprise_project_id is not None
            else base.share_enterprise_project_id,
            "rate_limit": self.rate if self.rate is not None else base.rate_limit,
            "rate_burst": self.burst if self.burst is not None else base.rate_burst,
        }
        update |= dict.fromkeys(_AUTH_FIELDS) | {"metadata_credentials": False}
        update |= self._credentials(base, os.environ if environ is None else environ)
        return base.model_copy(update=update)

    def _credentials(self, base: Settings, environ: Mapping[str, str]) -> dict[str, Any]:
        creds = self.credentials
        if creds == "agency":
            return {"metadata_credentials": True}
        if isinstance(creds, AssumeCredentials):
            assume = creds.assume
            iam = assume.iam_endpoint or base.agency_iam_endpoint or IAM_TEMPLATE.format(region=self.region)
            return {
                "metadata_credentials": True,
                "agency_domain": assume.domain,
                "agency_name": assume.agency,
                "agency_iam_endpoint": iam.rstrip("/"),
                "agency_duration_s": assume.duration_s or base.agency_duration_s,
            }
        if isinstance(creds, EnvCredentials):
            keys = creds.env.model_dump(exclude_none=True)
            values = {}
            for key, var in keys.items():
                value = environ.get(var)
                if not value:
                    raise AuthError(f"target {self.name!r}: credentials.env.{key}: ${var} is not set in this process")
                values[key] = value
            return _auth_fields(values)
        assert isinstance(creds, FileCredentials)
        return _auth_fields(self._read_secret_file(creds.file))

    def _read_secret_file(self, path: str) -> dict[str, str]:
        where = f"target {self.name!r}: credentials.file {path}"
        try:
            with open(path, "rb") as stream:
                data = stream.read(MAX_SECRET_FILE_BYTES + 1)
            parsed = yaml.safe_load(data.decode("utf-8-sig")) if len(data) <= MAX_SECRET_FILE_BYTES else None
        except OSError as exc:
            raise AuthError(f"{where}: cannot read: {exc.strerror or type(exc).__name__}") from None
        except (UnicodeDecodeError, yaml.YAMLError):
            raise AuthError(f"{where}: not a YAML or JSON mapping") from None  # never echo the content
        if not isinstance(parsed, dict):
            raise AuthError(f"{where}: not a YAML or JSON mapping of access_key/secret_key or token")
        values = {k: v for k, v in parsed.items() if k in _SECRET_KEYS and isinstance(v, str) and v}
        if "token" in values and len(values) > 1:
            raise AuthError(f"{where}: holds both a token and an AK/SK: keep one")
        if "token" not in values and not {"access_key", "secret_key"} <= values.keys():
            raise AuthError(f"{where}: needs token, or access_key and secret_key")
        return values


_AUTH_FIELDS: Final = (
    "auth_token",
    "iam_endpoint",
    "iam_user",
    "iam_password",
    "iam_domain",
    "access_key",
    "secret_key",
    "security_token",
    "agency_domain",
    "agency_name",
    "agency_iam_endpoint",
)
_SECRET_KEYS: Final = ("access_key", "secret_key", "security_token", "token")


def _auth_fields(values: Mapping[str, str]) -> dict[str, Any]:
    if "token" in values:
        return {"auth_token": SecretStr(values["token"])}
    token = values.get("security_token")
    return {
        "access_key": values["access_key"],
        "secret_key": SecretStr(values["secret_key"]),
        "security_token": SecretStr(token) if token else None,
    }


def _url_or_none(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith(("https://", "http://")):
        raise ValueError("must start with https:// (or http:// for a local fake)")
    return value.rstrip("/")


def _check_shared_place(first: Target, second: Target) -> None:
    """Two targets on one project at one endpoint share its limiter bucket and its shares: they
    must list disjoint shares (a discovering one would plan the other's tasks again) at one rate."""
    both = f"targets {first.name!r} and {second.name!r} name the same project at the same endpoint"
    if not first.shares or not second.shares or set(first.shares) & set(second.shares):
        raise ValueError(f"{both}: each must list its shares, and no share twice")
    if (first.rate, first.burst) != (second.rate, second.burst):
        raise ValueError(f"{both}: they share one limiter bucket, so give them the same rate and burst")


class TargetSet(_Strict):
    """A targets file: the list of targets, names unique."""

    targets: list[Target] = Field(min_length=1, max_length=1000)

    @field_validator("targets")
    @classmethod
    def _unique(cls, value: list[Target]) -> list[Target]:
        seen: set[str] = set()
        places: dict[tuple[str, str], Target] = {}
        for target in value:
            if target.name in seen:
                raise ValueError(f"target name {target.name!r} is used twice")
            seen.add(target.name)
            place = (target.api_endpoint, target.project_id)
            if (other := places.setdefault(place, target)) is not target:
                _check_shared_place(other, target)
        return value

    @property
    def names(self) -> list[str]:
        return [target.name for target in self.targets]

    def get(self, name: str, source: str = "SFS_CLEANUP_TARGETS_FILE") -> Target:
        for target in self.targets:
            if target.name == name:
                return target
        raise TargetsError([f"{source}: no target named {name[:80]!r} (the file has: {', '.join(self.names)})"])
