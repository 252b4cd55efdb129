"""Where Ray Train keeps runs: naming fresh runs and finding the newest one to resume."""

from __future__ import annotations

import os
import time

import pyarrow.fs as pafs


def normalise_storage_path(path: str) -> str:
    """Ray Train wants an absolute local path or a URI."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def fresh_run_name(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def latest_run_name(storage_path: str, prefix: str) -> str | None:
    """The newest ``<prefix>-<timestamp>`` run folder under ``storage_path``, if any."""
    filesystem, root = pafs.FileSystem.from_uri(normalise_storage_path(storage_path))
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError as error:
        raise OSError(f"cannot list {storage_path}: {error}") from None
    names = sorted(
        info.base_name
        for info in infos
        if info.type == pafs.FileType.Directory
        and info.base_name.startswith(prefix + "-")
        and info.base_name[len(prefix) + 1 :].replace("-", "").isdigit()
    )
    return names[-1] if names else None
