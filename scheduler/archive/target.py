"""Archive targets: where bundles are put and fetched back from.

A bundle's location is a URL (``file:///dir/RUN.zip``, ``s3://bucket/prefix/RUN.zip``) stored in
the archive index, so a run archived under one target can still be read after the setting moved on.
Every failure of a target is an :class:`ArchiveTargetError` whose message names the target and the
cause, never a credential.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from worker.errors import UnavailableError
from worker.settings import Settings


class ArchiveTargetError(UnavailableError):
    """The archive target refused or could not be reached: nothing was archived (or fetched)."""


class ArchiveTarget(Protocol):
    def put(self, name: str, source: Path) -> str:
        """Store ``source`` as ``name``; returns its location URL once it is durably there."""
        ...

    def fetch(self, location: str, dest: Path) -> None:
        """Copy the bundle at ``location`` (a URL this target returned) to ``dest``."""
        ...


class DirectoryTarget:
    """A directory (a mounted volume, NFS, ...). It must exist: a missing mount is a failure, not
    a reason to write into the container's own file system."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(self, name: str, source: Path) -> str:
        dest = self.directory / name
        try:
            if not self.directory.is_dir():
                raise FileNotFoundError(f"no directory {self.directory}")
            # Copied beside its final name and renamed: a reader never sees half a bundle.
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                    shutil.copyfileobj(src, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, dest)
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as exc:
            raise ArchiveTargetError(f"archive directory {self.directory}: {exc.strerror or exc}") from exc
        return dest.resolve().as_uri()

    def fetch(self, location: str, dest: Path) -> None:
        path = Path(unquote(urlsplit(location).path))
        try:
            shutil.copyfile(path, dest)
        except OSError as exc:
            raise ArchiveTargetError(f"archived bundle {location}: {exc.strerror or exc}") from exc


class S3Target:
    """A bucket of any S3-compatible service, through boto3 (Huawei Cloud OBS speaks S3)."""

    def __init__(self, settings: Settings, bucket: str, prefix: str) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._settings = settings
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            s = self._settings
            secret = {}
            if s.archive_s3_access_key is not None and s.archive_s3_secret_key is not None:
                secret = {
                    "aws_access_key_id": s.archive_s3_access_key.get_secret_value(),
                    "aws_secret_access_key": s.archive_s3_secret_key.get_secret_value(),
                }
            config = Config(
                s3={"addressing_style": s.archive_s3_addressing_style},
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                # Newer botocore adds CRC checksums by default, which several S3-compatible
                # services refuse: send them only where the operation requires one.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            session = boto3.session.Session()
            self._client = session.client(
                "s3",
                endpoint_url=s.archive_s3_endpoint,
                region_name=s.archive_s3_region,
                config=config,
                **secret,
            )
        return self._client

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, name: str, source: Path) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(name)
        try:
            # upload_file goes multipart for a large bundle; S3 makes the object visible only whole.
            self.client.upload_file(str(source), self.bucket, key, ExtraArgs={"ContentType": "application/zip"})
        except (BotoCoreError, ClientError) as exc:
            raise ArchiveTargetError(f"archive bucket s3://{self.bucket}/{key}: {exc}") from exc
        except Exception as exc:  # boto3's transfer manager wraps some failures in its own types
            raise ArchiveTargetError(f"archive bucket s3://{self.bucket}/{key}: {type(exc).__name__}: {exc}") from exc
        return f"s3://{self.bucket}/{key}"

    def fetch(self, location: str, dest: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        parts = urlsplit(location)
        try:
            self.client.download_file(parts.netloc, parts.path.lstrip("/"), str(dest))
        except (BotoCoreError, ClientError) as exc:
            raise ArchiveTargetError(f"archived bundle {location}: {exc}") from exc


def target_for(settings: Settings, url: str | None = None) -> ArchiveTarget | None:
    """The target of ``url`` (default: SFS_CLEANUP_ARCHIVE_URL); None when none is set."""
    url = url if url is not None else settings.archive_url
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme == "file":
        return DirectoryTarget(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        return S3Target(settings, parts.netloc, parts.path)
    raise ArchiveTargetError(f"{url!r} is not a file:/// or s3:// URL")


def fetch(settings: Settings, location: str, dest: Path) -> None:
    """Copy an archived bundle to ``dest``, whichever target it went to."""
    target = target_for(settings, location)
    assert target is not None
    target.fetch(location, dest)
