"""The offline bundle for a GPU machine without network: every package of requirements.lock as
a wheel for that machine's Python and platform, in parts small enough for one transfer each,
with a manifest of what is in it, what is left out and why.

    .venv/bin/python scripts/gpu_bundle.py [--python 3.12] [--part-mib 60] [--out gpu-bundle]
    # on the GPU machine, after copying every part: bash scripts/gpu_install.sh gpu-bundle /tmp/site

Left out: the GPU machine's own CUDA build of torch and torchvision and what only they need
(triton, the nvidia-* and cuda-* libraries): several GB, matched there to its driver; the
code runs on that torch (2.11 or newer). Ray's wheel loses its Java jars (ray/jars: Ray's
Java workers, which this project does not start), which brings it under one part. A package
PyPI has only as a source archive is built into a wheel here (all such in the lock are pure
Python). Files bigger than a part travel as numbered pieces that ``gpu_install.sh`` joins.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEFT_OUT = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")
WHY_LEFT_OUT = "the GPU machine's own CUDA build of torch/torchvision (and what only they need), matched to its driver"
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (39, 38, 35, 34, 31, 28, 27, 24, 17)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
DROPPED_FROM_WHEELS = {"ray": re.compile(r"^ray/jars/")}  # Ray's Java workers: not started here


def locked(path: Path) -> list[tuple[str, str]]:
    pins = []
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins.append((name, version))
    return pins


def download(name: str, version: str, python: str, into: Path) -> Path:
    """The pin's wheel for ``python`` on x86_64 Linux (binary, or pure Python), else a wheel
    built here from its source archive."""
    before = set(into.iterdir())
    binary = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    binary += ["--python-version", python, "--implementation", "cp", "-d", str(into), f"{name}=={version}"]
    for platform in PLATFORMS:
        binary += ["--platform", platform]
    done = subprocess.run(binary, capture_output=True, text=True)
    if done.returncode != 0:
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(into), f"{name}=={version}"],
            capture_output=True,
            text=True,
        )
        if built.returncode != 0:
            raise SystemExit(f"bundle: no wheel of {name}=={version} for Python {python}: {done.stderr.strip()[-300:]}")
    (new,) = set(into.iterdir()) - before
    if new.suffix != ".whl":
        raise SystemExit(f"bundle: {name}=={version} came as {new.name}, not a wheel")
    python_tag, abi, _ = new.stem.split("-")[-3:]
    cp = "cp" + python.replace(".", "")
    if abi not in ("none", "abi3", cp) or not any(
        t in ("py3", cp) or t.startswith("cp3") for t in python_tag.split(".")
    ):
        raise SystemExit(f"bundle: {new.name} is not for CPython {python}")
    return new


def without(wheel: Path, dropped: re.Pattern) -> int:
    """Rewrites ``wheel`` without the files ``dropped`` matches (and their RECORD lines);
    returns the bytes saved."""
    before = wheel.stat().st_size
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if dropped.match(item.filename):
                continue
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(line for line in lines if not dropped.match(line.split(",")[0])) + "\n").encode()
            target.writestr(item, data)
    slim.replace(wheel)
    return before - wheel.stat().st_size


def pack(files: list[Path], limit: int, out: Path) -> list[list[str]]:
    """Files into ``out/part-NN/`` folders of at most ``limit`` bytes, biggest first, a file
    bigger than a part cut into pieces ``NAME.piece-K`` (joined again on install)."""
    pieces: list[tuple[str, bytes | Path, int]] = []
    for f in files:
        size = f.stat().st_size
        if size <= limit:
            pieces.append((f.name, f, size))
            continue
        data = f.read_bytes()
        for k, start in enumerate(range(0, size, limit)):
            chunk = data[start : start + limit]
            pieces.append((f"{f.name}.piece-{k}", chunk, len(chunk)))
    parts: list[list[tuple[str, bytes | Path, int]]] = []
    for piece in sorted(pieces, key=lambda p: -p[2]):
        for part in parts:
            if sum(p[2] for p in part) + piece[2] <= limit:
                part.append(piece)
                break
        else:
            parts.append([piece])
    listing = []
    for n, part in enumerate(parts):
        folder = out / f"part-{n:02d}"
        folder.mkdir(parents=True)
        for name, content, _ in part:
            if isinstance(content, Path):
                shutil.copy2(content, folder / name)
            else:
                (folder / name).write_bytes(content)
        listing.append(sorted(name for name, _, _ in part))
    return listing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python (default 3.12)")
    parser.add_argument(
        "--part-mib", type=int, default=60, help="most MiB per part (a transfer's limit, less the code)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "gpu-bundle")
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument(
        "--have",
        type=Path,
        help="names of the packages the GPU machine already has (one a line, `pip list --format=freeze` will do): "
        "left out too, to carry less, at the machine's versions (gpu_install.sh then checks they fit)",
    )
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    pins = locked(args.lock)
    have = set()
    if args.have:
        for line in args.have.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                have.add(re.split(r"[=<>~ ]", line.strip())[0].lower().replace("_", "-"))
    carried = [(n, v) for n, v in pins if not LEFT_OUT.match(n) and n not in have]
    left_out = [f"{n}=={v}" for n, v in pins if LEFT_OUT.match(n)]
    theirs = [f"{n}=={v}" for n, v in pins if n in have and not LEFT_OUT.match(n)]
    with tempfile.TemporaryDirectory() as directory:
        wheels = Path(directory) / "wheels"
        wheels.mkdir()
        files, slimmed = [], {}
        for name, version in carried:
            wheel = download(name, version, args.python, wheels)
            if name in DROPPED_FROM_WHEELS:
                slimmed[wheel.name] = without(wheel, DROPPED_FROM_WHEELS[name])
            files.append(wheel)
        sizes = {f.name: f.stat().st_size for f in files}
        digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
        parts = pack(files, args.part_mib * 2**20, args.out)
    manifest = {
        "python": args.python,
        "lock": str(args.lock.relative_to(ROOT) if args.lock.is_relative_to(ROOT) else args.lock),
        "wheels": {name: {"bytes": sizes[name], "sha256": digests[name]} for name in sorted(sizes)},
        "left_out": {"packages": left_out, "why": WHY_LEFT_OUT},
        "the_machines_own": {"packages": theirs, "why": f"the machine has them ({args.have}): its versions are used"},
        "trimmed": {
            name: f"{saved / 2**20:.1f} MiB of Java jars (ray/jars) removed" for name, saved in slimmed.items()
        },
        "parts": parts,
    }
    for folder in [args.out, *sorted(args.out.glob("part-*"))]:  # each part says what the whole holds
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(sizes.values()) / 2**20
    print(
        f"bundle: {len(files)} wheels for Python {args.python} ({total:.0f} MiB) in {len(parts)} parts under {args.out}"
    )
    print(f"bundle: left out {len(left_out)} packages: {WHY_LEFT_OUT}")
    if theirs:
        print(f"bundle: left out {len(theirs)} more that the machine has ({args.have}): its versions are used")


if __name__ == "__main__":
    main()
