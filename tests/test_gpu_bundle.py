"""The offline bundle for a GPU machine (scripts/gpu_bundle.py, scripts/gpu_install.py) without
the network: parts never over their limit, a file bigger than a part cut into pieces and
joined again, every wheel checked against the manifest's digest, a missing part named, a
wheel slimmed of files (Ray's jars) with its RECORD, and pip installing what was gathered.
The whole path (bundle, install into a Python holding only torch, a pretraining through a
local Ray head) ran as benchmarks/gpu_pipeline.sh's CPU check (benchmarks/README.md)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bundle, install = _script("gpu_bundle"), _script("gpu_install")


def _wheel(directory: Path, name: str, files: dict[str, bytes]) -> Path:
    """A real, minimal wheel of package ``name`` 1.0 holding ``files``."""
    info = f"{name}-1.0.dist-info"
    contents = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in contents) + f"{info}/RECORD,,\n"
    path = directory / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, data in {**contents, f"{info}/RECORD": record.encode()}.items():
            wheel.writestr(member, data)
    return path


def _bundled(tmp_path: Path, limit: int) -> tuple[Path, list[Path]]:
    wheels = tmp_path / "wheels"
    wheels.mkdir(parents=True)
    small = _wheel(wheels, "small_pkg", {"small_pkg/__init__.py": b"VALUE = 1\n"})
    # Incompressible bytes, so the wheel is bigger than a part.
    big = _wheel(wheels, "big_pkg", {"big_pkg/__init__.py": b"", "big_pkg/blob.bin": bytes(range(256)) * 64})
    out = tmp_path / "bundle"
    parts = bundle.pack([small, big], limit, out)
    manifest = {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "wheels": {
            w.name: {"bytes": w.stat().st_size, "sha256": hashlib.sha256(w.read_bytes()).hexdigest()}
            for w in (small, big)
        },
        "parts": parts,
    }
    for folder in out.glob("part-*"):
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return out, [small, big]


def test_parts_stay_under_the_limit_and_a_big_wheel_is_joined_from_its_pieces(tmp_path):
    out, (small, big) = _bundled(tmp_path, limit=4096)
    assert big.stat().st_size > 4096
    for folder in out.glob("part-*"):
        assert sum(f.stat().st_size for f in folder.iterdir() if f.name != "manifest.json") <= 4096
    assert any(re.fullmatch(rf"{re.escape(big.name)}\.piece-\d+", f.name) for f in out.glob("part-*/*"))
    joined = tmp_path / "joined"
    joined.mkdir()
    _, wheels = install.gathered(out, joined)
    assert {w.name: w.read_bytes() for w in wheels} == {small.name: small.read_bytes(), big.name: big.read_bytes()}


def test_a_missing_part_or_a_broken_copy_is_named(tmp_path):
    out, _ = _bundled(tmp_path, limit=4096)
    folders = sorted(out.glob("part-*"))
    assert len(folders) >= 2
    (tmp_path / "joined").mkdir()
    last = folders[-1]
    for f in last.iterdir():
        if f.name != "manifest.json":
            f.unlink()
    with pytest.raises(SystemExit, match=f"not under {out}: copy {last.name}"):
        install.gathered(out, tmp_path / "joined")
    out, _ = _bundled(tmp_path / "again", limit=10**6)
    (wheel,) = [f for f in out.glob("part-*/small_pkg-*.whl")]
    wheel.write_bytes(wheel.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(SystemExit, match="small_pkg-1.0-py3-none-any.whl does not match the manifest's digest"):
        install.gathered(out, tmp_path / "joined")


def test_a_slimmed_wheel_loses_the_files_and_their_record_lines(tmp_path):
    wheel = _wheel(tmp_path, "ray", {"ray/__init__.py": b"", "ray/jars/ray_dist.jar": b"x" * 5000})
    saved = bundle.without(wheel, re.compile(r"^ray/jars/"))
    assert saved > 0
    with zipfile.ZipFile(wheel) as slim:
        names = slim.namelist()
        record = slim.read("ray-1.0.dist-info/RECORD").decode()
    assert "ray/jars/ray_dist.jar" not in names and "ray/__init__.py" in names
    assert "ray/jars" not in record and "ray/__init__.py" in record


def test_what_is_gathered_installs_offline_and_imports(tmp_path):
    out, _ = _bundled(tmp_path, limit=4096)
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "gpu_install.py"), str(out), "--target", str(target)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "install: 2 wheels into" in done.stdout
    imported = subprocess.run(
        [sys.executable, "-c", "import small_pkg, big_pkg.__init__; print(small_pkg.VALUE)"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": ""},
    )
    assert imported.stdout.strip() == "1", imported.stderr
    assert (target / "big_pkg" / "blob.bin").read_bytes() == bytes(range(256)) * 64
