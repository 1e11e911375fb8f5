"""The settings model: every field is ``SFS_CLEANUP_<NAME>``, checked on its own and together."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from worker.ids import explain
from worker.settings.base import ENV_PREFIX, CommaList, SettingsError, split_commas
from worker.settings.fleet import FleetSettings
from worker.settings.notify import NotifySettings
from worker.settings.redis_ha import RedisHASettings, RedisTarget


class Settings(RedisHASettings, FleetSettings, NotifySettings):
    """The service's settings. Every field is ``SFS_CLEANUP_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",  # a .env shared with other tools must not break start-up
        hide_input_in_errors=True,
    )

    # --- Redis and the broker -------------------------------------------------------------
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for the audit, plans and limiter.")
    broker_url: str | None = Field(None, description="Celery broker; defaults to the Redis URL.")
    key_prefix: str = Field("sfs", pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="Prefix of every Redis key.")
    retention_days: int = Field(
        90, ge=1, le=3650, description="How long a finished run with no failed task and its audit are kept."
    )
    retention_failed_days: int = Field(
        180, ge=1, le=3650, description="How long a run with failed tasks, or aborted or cancelled, is kept."
    )
    retention_dry_run_days: int = Field(7, ge=1, le=3650, description="How long a dry run is kept.")
    archive_url: str | None = Field(
        None,
        description="Where ended runs' evidence bundles are archived before their keys expire: "
        "file:///dir or s3://bucket/prefix. Unset: no archive.",
    )
    archive_s3_endpoint: str | None = Field(
        None, description="S3-compatible endpoint (e.g. Huawei Cloud OBS); unset: AWS S3."
    )
    archive_s3_region: str | None = Field(None, description="Region of the archive bucket.")
    archive_s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="Bucket in the host name (virtual) or in the path."
    )
    archive_s3_access_key: SecretStr | None = Field(
        None, description="Access key of the archive bucket; unset: the standard AWS variables or profile."
    )
    archive_s3_secret_key: SecretStr | None = Field(None, description="Secret key of the archive bucket (secret).")
    archive_retry_max_s: int = Field(
        3600, ge=1, le=86400, description="Longest wait between tries of a run the archive target refused."
    )

    # --- The API --------------------------------------------------------------------------
    api_endpoint: str | None = Field(None, description="e.g. https://sfs-turbo.ap-southeast-1.myhuaweicloud.com")
    project_id: str | None = Field(None, description="The project (32 hex characters in the console).")
    share_ids: CommaList = Field(
        default_factory=list, description="File systems to purge, comma-separated; empty: every available one found."
    )
    list_page_size: int = Field(1000, ge=1, le=10000, description="`limit` of each listing page.")
    http_connect_timeout_s: float = Field(5.0, gt=0, le=60, description="Seconds to open a connection.")
    http_read_timeout_s: float = Field(30.0, gt=0, le=300, description="Seconds to wait for an answer.")

    # --- Authentication (one of three modes) ----------------------------------------------
    auth_token: SecretStr | None = Field(None, description="A ready IAM token (X-Auth-Token).")
    iam_endpoint: str | None = Field(None, description="e.g. https://iam.ap-southeast-1.myhuaweicloud.com")
    iam_user: str | None = Field(None, description="IAM user name for the password login.")
    iam_password: SecretStr | None = Field(None, description="IAM user password (secret).")
    iam_domain: str | None = Field(None, description="The account (domain) name of the IAM user.")
    iam_token_renew_before_s: float = Field(3600.0, ge=0, description="Renew a token this long before expiry.")
    access_key: str | None = Field(None, description="AK for SDK-HMAC-SHA256 signing.")
    secret_key: SecretStr | None = Field(None, description="SK for SDK-HMAC-SHA256 signing (secret).")
    security_token: SecretStr | None = Field(None, description="For temporary AK/SK credentials.")

    # --- Rate limit and retries -----------------------------------------------------------
    rate_limit: float = Field(20.0, gt=0, le=100000, description="Requests per second for the whole fleet.")
    rate_burst: int = Field(
        1, ge=1, le=1000, description="Requests allowed at once; above 1, a strict gateway may answer 429."
    )
    rate_headroom: float = Field(
        0.02,
        ge=0,
        le=0.3,
        description="Slots are spaced this fraction wider than 1/limit: absorbs requests that leave late.",
    )
    rate_ramp_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="After an idle spell the fleet starts at half the limit, full after this (0: off).",
    )
    rate_wait_max_s: float = Field(60.0, gt=0, description="Longest a request waits for its slot.")
    circuit_error_ratio: float = Field(
        0.8, gt=0, le=1, description="Share of 5xx among recent answers that opens the circuit (an outage)."
    )
    half_open_fraction: float = Field(
        0.5, gt=0, le=1, description="Share of the limit let through while the circuit tests recovery."
    )
    throttle_penalty_s: float = Field(3.0, ge=0, le=60, description="Fleet pause after a 429 with no Retry-After.")
    max_retries: int = Field(12, ge=0, le=50, description="Retries of one task after 5xx or no answer.")
    retry_backoff_base_s: float = Field(1.0, gt=0, le=60, description="First backoff step; doubles per retry.")
    retry_backoff_max_s: float = Field(60.0, gt=0, le=900, description="Longest backoff step.")
    max_throttled_retries: int = Field(50, ge=0, description="429s one task may absorb before it fails.")

    # --- Jobs -----------------------------------------------------------------------------
    batch_size: int = Field(100, ge=1, le=1000, description="Tasks (of one share) per deletion job.")
    batch_concurrency: int = Field(32, ge=1, le=256, description="Deletes in flight inside one job.")
    job_time_limit_s: int = Field(1800, ge=30, description="Hard time limit of one deletion job.")
    visibility_timeout_s: int = Field(3600, ge=10, description="Redis broker redelivery of unacked jobs.")
    restore_interval_s: float = Field(10.0, gt=0, le=600, description="How often unacked jobs are swept.")
    audit_flush_ms: int = Field(
        50, ge=0, le=1000, description="Outcomes are written in pipelines this often; 0: each at once."
    )
    audit_key: SecretStr | None = Field(
        None,
        description="Keys the audit's hash chain (HMAC-SHA256): without it, anyone who can write Redis can "
        "rebuild the chain (secret).",
    )
    lease_s: int = Field(60, ge=5, le=3600, description="A job's claim on its batch, renewed while it works.")
    reconcile_after_s: int = Field(120, ge=10, description="Re-dispatch a batch with no progress for this long.")
    max_job_deliveries: int = Field(
        5, ge=2, le=100, description="A batch whose job is lost this often in a row, with no progress, fails."
    )
    control_time_limit_s: int | None = Field(
        None, ge=60, description="Hard time limit of a control job (planning); unset: VISIBILITY_TIMEOUT_S - 60."
    )
    planning_stale_s: int = Field(
        900, ge=60, description="Abort a run still planning with no planner progress for this long."
    )

    # --- Blast radius ---------------------------------------------------------------------
    failure_threshold_ratio: float = Field(0.5, gt=0, le=1, description="Stop a run above this failed share.")
    failure_threshold_min_attempts: int = Field(1000, ge=1, description="... once this many tasks were tried.")

    # --- Guard rails: consent, reviewed plans, the anomaly guard ---------------------------
    plan_max_age_s: int = Field(
        86400, ge=60, description="`runs apply` refuses a plan older than this (seconds; default 24 h)."
    )
    approval_timeout_s: int = Field(
        86400, ge=60, description="A held run not approved within this ends cancelled (approval_timeout)."
    )
    anomaly_factor: float = Field(
        3.0, gt=1, description="Hold an unattended run selecting more than this times the recent median."
    )
    anomaly_min_tasks: int = Field(1000, ge=0, description="... and at least this many tasks (never hold fewer).")
    anomaly_max_fraction: float = Field(
        0.9, gt=0, le=1, description="Hold an unattended run selecting more than this share of the listed tasks."
    )
    anomaly_history: int = Field(7, ge=3, le=100, description="Finished runs of the same policy to take the median of.")

    # --- Selection defaults (flags and policy files override) -----------------------------
    policy_file: str | None = Field(None, description="A YAML or TOML policy file.")
    policies_file: str | None = Field(
        None, description="A file of named policies, each with its own schedule (docs/scheduling.md)."
    )
    older_than: str = Field("7d", description="Only tasks that ended longer ago than this.")
    statuses: CommaList = Field(default_factory=lambda: ["SUCCESS", "FAIL"], description="Never DOING/DELETING.")
    types: CommaList = Field(default_factory=list, description="Empty: every type.")
    protected_task_ids: CommaList = Field(default_factory=list, description="Tasks no run may delete.")
    protected_share_ids: CommaList = Field(default_factory=list, description="Shares no run may touch.")
    max_deletions: int | None = Field(None, ge=0, description="Cap on deletions per run.")
    recheck_status: bool = Field(False, description="Show each task just before deleting it.")

    # --- Schedule and monitoring ----------------------------------------------------------
    schedule_cron: str = Field("0 2 * * *", description="Nightly purge, as a cron expression.")
    schedule_timezone: str = Field("UTC", description="Time zone of the cron expression (UTC avoids DST).")
    schedule_enabled: bool = Field(False, description="Let beat send the nightly purge (opt-in).")
    beat_lock_timeout_s: int = Field(
        90, ge=5, le=3600, description="RedBeat lock: a standby beat takes over after this."
    )
    beat_max_loop_interval_s: int = Field(15, ge=1, le=300, description="Longest sleep of beat between ticks.")
    flower_basic_auth: SecretStr | None = Field(
        None, description="user:password for Flower (comma-separated for several users)."
    )
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Port of `sfs-cleanup metrics` (default 9808).")

    # --- Logs -----------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["json", "console"] = Field(
        "json", description="json (for shippers) or console, for the services; the CLI logs console form to stderr."
    )

    @field_validator("share_ids", "statuses", "types", "protected_task_ids", "protected_share_ids", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return split_commas(value)

    @field_validator("statuses", "types", mode="after")
    @classmethod
    def _known_values(cls, value: list[str], info: Any) -> list[str]:
        from worker.models import TaskStatus, TaskType

        allowed = {"statuses": {s.value for s in TaskStatus}, "types": {t.value for t in TaskType}}[info.field_name]
        wrong = [v for v in value if v not in allowed]
        if wrong:
            raise ValueError(f"unknown value(s) {', '.join(map(repr, wrong))}; allowed: {', '.join(sorted(allowed))}")
        return value

    @field_validator("project_id")
    @classmethod
    def _project_id(cls, value: str | None) -> str | None:
        if value is not None and (reason := explain(value)):
            raise ValueError(f"project ID {reason}")
        return value

    @field_validator("share_ids", "protected_share_ids", "protected_task_ids")
    @classmethod
    def _id_lists(cls, value: list[str]) -> list[str]:
        for item in value:
            if reason := explain(item):
                raise ValueError(f"ID {item[:40]!r} {reason}")
        return value

    @field_validator("flower_basic_auth")
    @classmethod
    def _flower_auth(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from worker.basicauth import parse_basic_auth

            parse_basic_auth(value.get_secret_value())  # its errors never echo the value
        return value

    @field_validator("api_endpoint", "iam_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local fake)")
        return value.rstrip("/")

    @field_validator("redis_url", "broker_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("older_than")
    @classmethod
    def _older_than(cls, value: str) -> str:
        from worker.durations import parse_duration

        parse_duration(value)
        return value

    @field_validator("schedule_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from worker.cronspec import parse_cron

        parse_cron(value)  # its ValueError names the field that is wrong
        return value

    @field_validator("schedule_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from worker.cronspec import check_timezone

        return check_timezone(value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        P = ENV_PREFIX  # noqa: N806 - reads better in the messages below
        problems: list[str] = self._redis_ha_problems(self.redis_url, broker_url_set=self.broker_url is not None)
        if self.broker_url is None:
            self.broker_url = self.redis_url
        iam = [self.iam_endpoint, self.iam_user, self.iam_password, self.iam_domain]
        if any(v is not None for v in iam) and not all(v is not None for v in iam):
            problems.append(
                f"{P}IAM_*: the IAM login needs all of {P}IAM_ENDPOINT, {P}IAM_USER, {P}IAM_PASSWORD, {P}IAM_DOMAIN"
            )
        if (self.access_key is None) != (self.secret_key is None):
            problems.append(f"{P}ACCESS_KEY: AK/SK signing needs both {P}ACCESS_KEY and {P}SECRET_KEY")
        modes = sum(
            [
                self.auth_token is not None,
                all(v is not None for v in iam),
                self.access_key is not None,
                self.metadata_credentials,
            ]
        )
        if modes > 1:
            problems.append(
                f"{P}AUTH_TOKEN: set exactly one of {P}AUTH_TOKEN, the {P}IAM_* login, {P}ACCESS_KEY/SECRET_KEY, "
                f"or {P}METADATA_CREDENTIALS"
            )
        if self.retry_backoff_base_s > self.retry_backoff_max_s:
            problems.append(f"{P}RETRY_BACKOFF_BASE_S: must not exceed {P}RETRY_BACKOFF_MAX_S")
        if self.rate_wait_max_s >= self.job_time_limit_s:
            problems.append(f"{P}RATE_WAIT_MAX_S: must be shorter than {P}JOB_TIME_LIMIT_S")
        # A job still running when its message's visibility timeout passes is delivered again:
        # the timeout must outlast the longest job, or every long job runs twice.
        if self.job_time_limit_s + 60 > self.visibility_timeout_s:
            problems.append(
                f"{P}VISIBILITY_TIMEOUT_S: {self.visibility_timeout_s} must exceed {P}JOB_TIME_LIMIT_S "
                f"({self.job_time_limit_s}) by at least 60 s, or long jobs are delivered twice"
            )
        # The same holds for control jobs: a planner still listing when its trigger message is
        # delivered again would be joined by a second one (a trigger without a key plans twice).
        if self.control_time_limit_s is not None and self.control_time_limit_s + 60 > self.visibility_timeout_s:
            problems.append(
                f"{P}VISIBILITY_TIMEOUT_S: {self.visibility_timeout_s} must exceed {P}CONTROL_TIME_LIMIT_S "
                f"({self.control_time_limit_s}) by at least 60 s, or a running planner is delivered again"
            )
        if self.beat_lock_timeout_s < 2 * self.beat_max_loop_interval_s:
            # The lock is refreshed once per tick: a lock shorter than two ticks can expire in
            # between, and the running beat would then exit.
            problems.append(f"{P}BEAT_LOCK_TIMEOUT_S: must be at least twice {P}BEAT_MAX_LOOP_INTERVAL_S")
        problems.extend(self._archive_problems())
        if self.reconcile_after_s < self.lease_s:
            problems.append(f"{P}RECONCILE_AFTER_S: must be at least {P}LEASE_S")
        problems.extend(self._smn_problems(self.project_id))
        problems.extend(self._fleet_problems())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _archive_problems(self) -> list[str]:
        P = ENV_PREFIX  # noqa: N806
        problems: list[str] = []
        url = self.archive_url
        if url is not None and not url.startswith(("file:///", "s3://")):
            problems.append(f"{P}ARCHIVE_URL: must be file:///absolute/dir or s3://bucket[/prefix]")
        if url is not None and url.startswith("s3://") and not url.removeprefix("s3://").split("/")[0]:
            problems.append(f"{P}ARCHIVE_URL: names no bucket (s3://bucket[/prefix])")
        if (self.archive_s3_access_key is None) != (self.archive_s3_secret_key is None):
            problems.append(f"{P}ARCHIVE_S3_ACCESS_KEY: set both it and {P}ARCHIVE_S3_SECRET_KEY, or neither")
        endpoint = self.archive_s3_endpoint
        if endpoint is not None and not endpoint.startswith(("https://", "http://")):
            problems.append(f"{P}ARCHIVE_S3_ENDPOINT: must start with https:// (or http:// for a local server)")
        return problems

    # --- Derived values -------------------------------------------------------------------
    @property
    def redis(self) -> RedisTarget:
        """Where the fleet's Redis is: through the Sentinels, or ``REDIS_URL`` itself."""
        return self.redis_target(self.redis_url)

    @property
    def control_job_time_limit_s(self) -> int:
        """The control jobs' hard time limit: as set, else the longest the broker allows."""
        return self.control_time_limit_s or max(1, self.visibility_timeout_s - 60)

    @property
    def auth_mode(self) -> Literal["token", "iam", "aksk", "metadata", "none"]:
        if self.auth_token is not None:
            return "token"
        if self.iam_user is not None:
            return "iam"
        if self.access_key is not None:
            return "aksk"
        if self.metadata_credentials:
            return "metadata"
        return "none"

    def require_api(self) -> None:
        """Settings every command that talks to the API needs; raises :class:`SettingsError`."""
        missing = [
            f"{ENV_PREFIX}{name.upper()}: is required to reach the API"
            for name in ("api_endpoint", "project_id")
            if getattr(self, name) is None
        ]
        if self.auth_mode == "none":
            missing.append(
                f"{ENV_PREFIX}AUTH_TOKEN: set a token, the IAM_* login, ACCESS_KEY/SECRET_KEY or METADATA_CREDENTIALS"
            )
        if missing:
            raise SettingsError(missing)
