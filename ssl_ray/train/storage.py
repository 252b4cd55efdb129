"""Where Ray Train keeps runs (a local folder or ``s3://bucket/prefix``): naming fresh runs,
finding the newest one to resume, and the filesystem Ray Train writes checkpoints through."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pyarrow.fs as pafs

from ssl_ray.data.errors import DataSourceError
from ssl_ray.data.objectstore import describe_failure, filesystem_for, is_remote
from ssl_ray.sections import StorageConfig


def normalise_storage_path(path: str) -> str:
    """Ray Train wants an absolute local path or a URI."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True)
class RunStorage:
    url: str  # what the user named: /abs/path or s3://bucket/prefix
    filesystem: pafs.FileSystem | None  # None: let Ray Train use the local disk
    path: str  # inside ``filesystem``: "bucket/prefix" for S3

    @classmethod
    def resolve(cls, storage_path: str, storage: StorageConfig) -> RunStorage:
        url = normalise_storage_path(storage_path)
        if not is_remote(url):
            return cls(url, None, url)
        # The endpoint and region from the config, credentials from the AWS chain.
        filesystem, path = filesystem_for(url, storage.endpoint_url, storage.region)
        return cls(url, filesystem, path)

    def display(self, path: str) -> str:
        """A path Ray Train reports (``bucket/prefix/...`` on S3) as a URL the user can use."""
        return f"s3://{path}" if self.filesystem is not None and not path.startswith("s3://") else path

    def check(self, storage: StorageConfig) -> None:
        """Fail before training if checkpoints could not be written: the bucket must exist."""
        if self.filesystem is None:
            return
        filesystem, path = filesystem_for(self.url, storage.endpoint_url, storage.region, fail_fast=True)
        try:
            missing = filesystem.get_file_info(path.split("/", 1)[0]).type == pafs.FileType.NotFound
        except OSError as error:
            raise DataSourceError(describe_failure(self.url, error)) from None
        if missing:
            raise DataSourceError(f"{self.url}: the bucket does not exist")


def fresh_run_name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def latest_run_name(storage_path: str, prefix: str, storage: StorageConfig | None = None) -> str | None:
    """The newest ``<prefix>-<timestamp>`` run folder under ``storage_path``, if any."""
    runs = RunStorage.resolve(storage_path, storage or StorageConfig())
    filesystem = runs.filesystem or pafs.LocalFileSystem()
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(runs.path, allow_not_found=True))
    except OSError as error:
        raise DataSourceError(describe_failure(runs.url, error)) from None
    names = sorted(
        info.base_name
        for info in infos
        if info.type == pafs.FileType.Directory
        and info.base_name.startswith(prefix + "-")
        and info.base_name[len(prefix) + 1 :].replace("-", "").isdigit()
    )
    return names[-1] if names else None


def run_exists(storage_path: str, name: str, storage: StorageConfig | None = None) -> bool:
    """Whether a run folder ``name`` is under ``storage_path``."""
    runs = RunStorage.resolve(storage_path, storage or StorageConfig())
    filesystem = runs.filesystem or pafs.LocalFileSystem()
    try:
        return filesystem.get_file_info(f"{runs.path.rstrip('/')}/{name}").type == pafs.FileType.Directory
    except OSError as error:
        raise DataSourceError(describe_failure(runs.url, error)) from None
