"""Share discovery and platform credentials: the ``SFS_CLEANUP_SHARE_NAME_PATTERN`` /
``SHARE_ENTERPRISE_PROJECT_ID`` and ``SFS_CLEANUP_METADATA_*`` / ``AGENCY_*`` fields.

Kept in their own mixin (like the notification fields) so that each group of settings reads on
its own and merges cleanly with the others.
"""

from __future__ import annotations

import re
from typing import Final

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

from worker.ids import explain
from worker.settings.base import ENV_PREFIX

#: Where an ECS or CCE instance with an agency gets its temporary AK/SK and security token
#: (the address the official SDK's metadata credential provider asks).
DEFAULT_METADATA_URL: Final = "http://169.254.169.254/openstack/latest/securitykey"
# The glob's characters: SFS Turbo names are letters, digits, '-' and '_'; a glob adds * ? [ ] !.
_GLOB: Final = re.compile(r"[A-Za-z0-9_.*?\[\]!-]{1,128}")


class FleetSettings(BaseSettings):
    """Which shares a run finds by itself, and credentials that come from the platform."""

    # --- Targets: many projects, regions and accounts (worker.targets) ------------------
    targets_file: str | None = Field(
        None,
        description="A YAML file of targets (project, region, credentials, shares, rate each); unset: the one "
        "project of API_ENDPOINT/PROJECT_ID (docs/targets.md).",
    )

    # --- Share discovery (when SFS_CLEANUP_SHARE_IDS is empty) ----------------------------
    share_name_pattern: str = Field(
        "*", description="With no SHARE_IDS: purge the available shares whose name matches this glob."
    )
    share_enterprise_project_id: str | None = Field(
        None, description="With no SHARE_IDS: only shares of this enterprise project (unset: any)."
    )

    # --- Platform credentials (temporary AK/SK of the instance's agency) ------------------
    metadata_credentials: bool = Field(
        False, description="Sign with the temporary AK/SK and security token of the instance's agency."
    )
    metadata_url: str = Field(DEFAULT_METADATA_URL, description="The metadata service's securitykey address.")
    metadata_renew_before_s: float = Field(
        900.0, ge=0, le=86400, description="Fetch new temporary credentials this long before they expire."
    )
    metadata_cache_key: SecretStr | None = Field(
        None,
        description="A fleet secret (32+ characters) sealing the shared temporary credentials in Redis; "
        "unset: each process fetches its own.",
    )

    # --- An agency of another account, assumed with the platform credentials ---------------
    agency_domain: str | None = Field(None, description="The account (domain) name whose agency to assume.")
    agency_name: str | None = Field(None, description="The agency to assume in AGENCY_DOMAIN.")
    agency_iam_endpoint: str | None = Field(
        None, description="IAM for the assume-role call, e.g. https://iam.myhuaweicloud.com"
    )
    agency_duration_s: int = Field(3600, ge=900, le=86400, description="Lifetime asked for the agency's credentials.")

    @field_validator("share_name_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        if not _GLOB.fullmatch(value):
            raise ValueError("must be a glob of letters, digits, '-', '_', '.', '*', '?' and [...] (1-128)")
        return value

    @field_validator("share_enterprise_project_id")
    @classmethod
    def _enterprise_project(cls, value: str | None) -> str | None:
        if value is not None and (reason := explain(value)):
            raise ValueError(f"enterprise project ID {reason}")
        return value

    @field_validator("agency_iam_endpoint")
    @classmethod
    def _agency_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local fake)")
        return value.rstrip("/") if value is not None else None

    @field_validator("metadata_url")
    @classmethod
    def _metadata_url(cls, value: str) -> str:
        # The metadata service is plain HTTP on a link-local address by design; anything else
        # must at least be a URL.
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// URL (the metadata service's securitykey address)")
        return value

    @field_validator("metadata_cache_key")
    @classmethod
    def _cache_key(cls, value: SecretStr | None) -> SecretStr | None:
        # The key is all that keeps a reader of Redis from signing requests: not a short one.
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. openssl rand -base64 32)")
        return value

    def _fleet_problems(self) -> list[str]:
        P = ENV_PREFIX  # noqa: N806 - reads better in the messages below
        agency = [self.agency_domain, self.agency_name, self.agency_iam_endpoint]
        if not any(v is not None for v in agency):
            return []
        problems = []
        if not all(v is not None for v in agency):
            problems.append(
                f"{P}AGENCY_*: assuming an agency needs all of {P}AGENCY_DOMAIN, {P}AGENCY_NAME, {P}AGENCY_IAM_ENDPOINT"
            )
        if not self.metadata_credentials:
            problems.append(
                f"{P}AGENCY_NAME: an agency is assumed with the platform credentials: set {P}METADATA_CREDENTIALS"
            )
        return problems
