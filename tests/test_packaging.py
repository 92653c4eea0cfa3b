"""A wheel (what `pip install .` and the Docker image install) carries the Hydra config."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_wheel_ships_conf_and_loads_it_outside_the_checkout(tmp_path):
    # Build from a copy: an in-tree build would leave build/ and egg-info in the checkout.
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        src.mkdir(exist_ok=True)
        shutil.copy(REPO / name, src / name)
    for name in ("conf", "pfms_client", "pfms_server"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    # --no-build-isolation: setuptools is already in the venv (torch depends on it); no index needed.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("pfms-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {f"pfms_conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    assert wanted and wanted <= names, sorted(wanted - names)
    assert not any(n.startswith("conf/") for n in names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # A fresh interpreter that sees the unpacked wheel and not the checkout.
    code = ("import pfms_client.config as c; cfg = c.load_config('model=paper'); "
            "print(c.conf_dir()); print(cfg.model.embed_dim)")
    env = {k: v for k, v in os.environ.items() if k != "PFMS_CONF_DIR"} | {"PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    where, embed = out.stdout.split()
    assert Path(where) == site / "pfms_conf"
    assert int(embed) > 0
