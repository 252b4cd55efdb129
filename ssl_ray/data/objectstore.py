"""Local folders and S3 (or any S3-compatible store) behind one pyarrow filesystem.

Credentials are never passed here: pyarrow's S3 client takes them from the standard AWS chain
(environment, shared profile, instance or pod role), so they never enter a config, a log or
an MLflow param. What a config may say is where the store is: ``storage.endpoint_url`` (or
``AWS_ENDPOINT_URL``) and ``storage.region``.

Listing doubles as the fail-fast check: a missing bucket, an empty prefix, access denied or an
unreachable endpoint raise ``DataSourceError`` with the URL and the cause on one line, before
any training starts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from ssl_ray.data.errors import DataSourceError

# Objects that are bookkeeping, not data (Spark/Hadoop markers, our own manifest).
_IGNORED_NAMES = re.compile(r"^(_SUCCESS|_metadata|_common_metadata|manifest\.json|\..*)$")


@dataclass(frozen=True)
class StoredFile:
    path: str  # as the filesystem names it: "bucket/key" for S3, absolute for local files
    size: int


def is_remote(url: str) -> bool:
    return url.startswith("s3://")


def endpoint_from_env() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def filesystem_for(
    url: str, endpoint_url: str | None = None, region: str | None = None, fail_fast: bool = False
) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a local path or an ``s3://bucket/prefix`` URL.

    ``fail_fast`` caps timeouts and retries, for the checks before a run; training keeps the
    SDK's retries, which ride out a store's brief hiccups."""
    if not is_remote(url):
        if "://" in url:
            raise DataSourceError(f"{url}: unsupported scheme (use a local path or s3://bucket/prefix)")
        return pafs.LocalFileSystem(), str(Path(url).expanduser().resolve())
    endpoint = endpoint_url or endpoint_from_env()
    options: dict = {}
    if endpoint:
        parsed = urlparse(endpoint)
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region or endpoint:
        options["region"] = region or "us-east-1"  # S3-compatible stores accept any region
    if fail_fast:
        options.update(
            connect_timeout=3.0,
            request_timeout=10.0,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2),
        )
    path = url.removeprefix("s3://").rstrip("/")
    if not path or path.startswith("/"):
        raise DataSourceError(f"{url}: expected s3://bucket/prefix")
    return pafs.S3FileSystem(**options), path


def describe_failure(url: str, error: BaseException, endpoint: str | None = None) -> str:
    """One line naming the URL and the cause, from the S3 client's long error text."""
    text = str(error)
    lowered = text.lower()
    where = f" (endpoint {endpoint})" if endpoint else ""
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered:
        cause = "the bucket does not exist"
    elif any(s in lowered for s in ("accessdenied", "access_denied", "access denied", "forbidden")) or "403" in text:
        cause = "access denied: check the AWS credentials (environment, profile or instance role)"
    elif "invalidaccesskeyid" in lowered or "signaturedoesnotmatch" in lowered:
        cause = "the AWS credentials were rejected"
    elif any(
        s in lowered
        for s in (
            "couldn't connect",
            "could not connect",
            "connection refused",
            "resolve host",
            "timed out",
            "timeout",
            "curl",
        )
    ):
        cause = f"cannot reach the storage endpoint{where}"
    else:
        cause = text.splitlines()[0] if text else type(error).__name__
    return f"{url}: {cause}"


def list_files(url: str, endpoint_url: str | None = None, region: str | None = None) -> list[StoredFile]:
    """Every file under ``url`` (recursively, sorted), or ``DataSourceError`` saying why not."""
    filesystem, root = filesystem_for(url, endpoint_url, region, fail_fast=True)
    endpoint = endpoint_url or endpoint_from_env() if is_remote(url) else None
    try:
        if is_remote(url):
            bucket = root.split("/", 1)[0]
            if filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise DataSourceError(f"{url}: the bucket does not exist")
        info = filesystem.get_file_info(root)
        if info.type == pafs.FileType.File:
            return [StoredFile(info.path, info.size)]
        if info.type == pafs.FileType.NotFound and not is_remote(url):
            raise DataSourceError(f"{url}: no such file or directory")
        infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except DataSourceError:
        raise
    except OSError as error:
        raise DataSourceError(describe_failure(url, error, endpoint)) from None
    files = sorted(
        (
            StoredFile(i.path, i.size)
            for i in infos
            if i.type == pafs.FileType.File and not _IGNORED_NAMES.match(i.base_name)
        ),
        key=lambda f: f.path,
    )
    if not files:
        raise DataSourceError(f"{url}: no files under this prefix")
    return files
