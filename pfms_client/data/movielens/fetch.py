"""Fetch MovieLens-100K's atomic files out of the recbole wheel on PyPI.

RecBole ships ml-100k inside its wheel. The MovieLens licence forbids
redistribution, so this project never stores any of it: each user runs the
fetch command once (``python -m pfms_client.data.movielens fetch``), which
downloads the wheel with pip into a temp dir and extracts only these files.
Nothing here runs during tests or training.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# The wheel's layout is tied to this exact release.
RECBOLE_REQUIREMENT = "recbole==1.2.1"
WHEEL_GLOB = "recbole-1.2.1-*.whl"
WHEEL_FOLDER = "recbole/dataset_example/ml-100k"
RAW_FILES = {"inter": "ml-100k.inter", "user": "ml-100k.user", "item": "ml-100k.item"}


def fetch_raw(raw_dir: Path, wheel: Path | None = None) -> list[Path]:
    """Extract the raw files into ``raw_dir``, downloading the wheel unless one is given."""
    if wheel is not None:
        return extract_raw(wheel, raw_dir)
    with tempfile.TemporaryDirectory(prefix="pfms-recbole-") as tmp:
        return extract_raw(download_wheel(Path(tmp)), raw_dir)


def download_wheel(dest: Path) -> Path:
    """``pip download recbole==1.2.1 --no-deps`` into ``dest``; returns the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", RECBOLE_REQUIREMENT, "--no-deps", "-d", str(dest)]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob(WHEEL_GLOB))
    if not wheels:
        raise FileNotFoundError(f"pip download left no {WHEEL_GLOB} in {dest}")
    return wheels[0]


def extract_raw(wheel: Path, raw_dir: Path) -> list[Path]:
    """Copy the ml-100k files out of the wheel, each renamed into place only when complete."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(wheel) as zf:
        present = set(zf.namelist())
        wanted = {name: f"{WHEEL_FOLDER}/{name}" for name in RAW_FILES.values()}
        missing = sorted(member for member in wanted.values() if member not in present)
        if missing:
            raise FileNotFoundError(f"{wheel} does not contain {missing}")
        for name, member in wanted.items():
            final = raw_dir / name
            tmp = raw_dir / f".{name}.{os.getpid()}.tmp"
            try:
                tmp.write_bytes(zf.read(member))
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(final)
    return written
