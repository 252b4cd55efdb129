"""Installs the offline bundle (scripts/gpu_bundle.py) into a folder for PYTHONPATH, with the
machine's own python3 (which already holds torch and torchvision), no network needed.

    python3 scripts/gpu_install.py BUNDLE [--target /tmp/ssl-ray-site]
    export PYTHONPATH=/tmp/ssl-ray-site:$PWD

BUNDLE holds the ``part-NN`` folders, copied over in one transfer or one each. Every wheel is
checked against the manifest's digest (pieces of a big one joined first), a missing part is
named, then pip installs them all without an index or dependency resolution. Last, each
installed package's requirements are checked against what is importable (the bundle and the
machine's own packages): a conflict is listed, not fatal, since the machine's versions of
torch, torchvision (and those of ``--have``) are used as they are.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path


def gathered(bundle: Path, into: Path) -> tuple[dict, list[Path]]:
    manifests = sorted(bundle.glob("*/manifest.json")) or sorted(bundle.glob("manifest.json"))
    if not manifests:
        raise SystemExit(f"install: no manifest.json under {bundle} (is it a gpu_bundle.py folder?)")
    manifest = json.loads(manifests[0].read_text())
    have = {f.name: f for f in bundle.glob("part-*/*") if f.name != "manifest.json"}
    named = {name for part in manifest["parts"] for name in part}
    missing = sorted(named - set(have))
    if missing:
        absent = sorted({f"part-{n:02d}" for n, part in enumerate(manifest["parts"]) if set(part) & set(missing)})
        raise SystemExit(
            f"install: {len(missing)} files of the bundle are not under {bundle}: copy {', '.join(absent)}"
        )
    wheels = []
    for name, expected in manifest["wheels"].items():
        if name in have:
            path = have[name]
        else:  # a wheel bigger than a part: its pieces, in order
            pieces = sorted((p for p in have if p.startswith(f"{name}.piece-")), key=lambda p: int(p.rsplit("-", 1)[1]))
            path = into / name
            with path.open("wb") as out:
                for piece in pieces:
                    out.write(have[piece].read_bytes())
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected["sha256"]:
            raise SystemExit(f"install: {name} does not match the manifest's digest (a broken copy?)")
        wheels.append(path)
    return manifest, wheels


def conflicts(target: Path) -> list[str]:
    """Requirements of the installed packages that what is importable does not meet."""
    sys.path.insert(0, str(target))
    from packaging.requirements import Requirement  # the bundle's, or the machine's

    found = []
    for dist in metadata.distributions(path=[str(target)]):
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            try:
                version = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                found.append(f"{dist.metadata['Name']} needs {requirement}, which is not installed")
                continue
            if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
                found.append(f"{dist.metadata['Name']} needs {requirement}, the machine has {version}")
    return sorted(set(found))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--target", type=Path, default=Path("/tmp/ssl-ray-site"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        manifest, wheels = gathered(args.bundle, Path(directory))
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        if manifest["python"] != python:
            raise SystemExit(f"install: the bundle is for Python {manifest['python']}, this is {python}")
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile"]
        pip += ["--disable-pip-version-check", "--upgrade", "--target", str(args.target), *map(str, wheels)]
        subprocess.run(pip, check=True)
    print(f"install: {len(wheels)} wheels into {args.target}")
    for line in conflicts(args.target):
        print(f"install: warning: {line}")


if __name__ == "__main__":
    main()
