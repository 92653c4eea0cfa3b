"""A wheel (what `pip install .` and the Docker image install) carries every package, found
automatically (a new subpackage too), and the Hydra config."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO

PACKAGES = ("pfms_client", "pfms_server")
BUILD_FILES = ("pyproject.toml", "setup.py", "README.md")  # what the build reads besides the packages and conf/


def test_wheel_ships_conf_and_loads_it_outside_the_checkout(tmp_path):
    # Build from a copy: an in-tree build would leave build/ and egg-info in the checkout.
    src = tmp_path / "src"
    for name in BUILD_FILES:
        src.mkdir(exist_ok=True)
        shutil.copy(REPO / name, src / name)
    for name in ("conf", *PACKAGES):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    # A subpackage nobody listed anywhere: packages are found, so it is in the wheel.
    (src / "pfms_server" / "probe_new_part").mkdir()
    (src / "pfms_server" / "probe_new_part" / "__init__.py").write_text("VALUE = 7\n")
    # --no-build-isolation: setuptools is already in the venv (torch depends on it); no index needed.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("pfms-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {f"pfms_conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    assert wanted and wanted <= names, sorted(wanted - names)
    assert not any(n.startswith("conf/") for n in names)
    modules = {p.relative_to(REPO).as_posix() for top in PACKAGES for p in (REPO / top).rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert {"pfms_server/aggregation/pfmsmtrec.py", "pfms_client/data/synthetic/aliexpress.py",
            "pfms_client/data/movielens/convert.py", "pfms_server/deploy/local_run.py",
            "pfms_server/probe_new_part/__init__.py", "pfms_conf/config.yaml"} <= names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # A fresh interpreter that sees the unpacked wheel and not the checkout.
    code = ("import pfms_client.config as c; cfg = c.load_config('model=paper'); "
            "import pfms_server.aggregation.pfmsmtrec, pfms_client.data.synthetic.aliexpress, pfms_server.probe_new_part; "
            "print(c.conf_dir()); print(cfg.model.embed_dim)")
    env = {k: v for k, v in os.environ.items() if k != "PFMS_CONF_DIR"} | {"PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    where, embed = out.stdout.split()
    assert Path(where) == site / "pfms_conf"
    assert int(embed) > 0


def test_the_image_gets_everything_the_wheel_build_reads():
    """docker/Dockerfile builds the wheel too: what the build reads (above) is sent and copied."""
    needed = {*BUILD_FILES, "conf", *PACKAGES}
    ignore = (REPO / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    sent = {line[1:].strip().rstrip("/") for line in ignore if line.startswith("!")}
    dockerfile = (REPO / "docker" / "Dockerfile").read_text().splitlines()
    copied = {src.rstrip("/") for line in dockerfile if line.startswith("COPY ") for src in line.split()[1:-1]}
    assert needed <= sent, sorted(needed - sent)
    assert needed <= copied, sorted(needed - copied)
