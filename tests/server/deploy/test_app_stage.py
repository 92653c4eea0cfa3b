"""pfms-run's app stage: the FAB built from it is byte for byte the FAB ``flwr run``
builds from the app folder, whatever lies beside the app's files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from flwr.cli.build import build_fab_from_disk

from conftest import REPO
from pfms_server.deploy.app_stage import fab_files, stage_app


def _write(root: Path, rel: str, text: str = "x = 1\n") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# A Flower app config without fab-include: Flower's built-in patterns pick the files.
BARE = """[project]
name = "stagetest"
version = "1.0.0"
dependencies = ["flwr"]

[tool.flwr.app]
publisher = "pfms"

[tool.flwr.app.components]
serverapp = "pfms_server.server_app:app"
clientapp = "pfms_client.client_app:app"
"""


def _app(root: Path, gitignore: str, pyproject: str = BARE) -> Path:
    app = root / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(pyproject)
    (app / ".gitignore").write_text(gitignore)
    for rel in ["pfms_client/__init__.py", "pfms_client/data/io.py", "pfms_server/__init__.py",
                "conf/config.yaml", "README.md", "docs/notes.md", "tests/test_x.py", "tests/helpers.py",
                "outputs/run.json", "keep/outputs/kept.py",  # /outputs/ is ignored only at the top
                "pfms_client/__pycache__/io.cpython-311.pyc", "pfms_client/data/__pycache__/io.py",
                ".venv/lib/python3.11/site-packages/pkg/mod.py", ".venv/pyvenv.cfg",
                "build/lib/pfms_client/__init__.py", "lib/thing.py", "data/big.csv", "notes.txt",
                "pkg.egg-info/PKG-INFO", "deep/a/b/c/d/e/f/g/h/module.py", ".flwr/config.toml"]:
        _write(app, rel)
    os.symlink(app / "README.md", app / "linked.md")  # flwr run skips symlinks
    return app


def test_the_stage_builds_the_same_fab_as_the_app_folder(tmp_path):
    app = _app(tmp_path, ".venv/\n__pycache__/\n*.pyc\n*.egg-info/\n/outputs/\n")
    staged = stage_app(app, tmp_path / "stage")
    want, got = build_fab_from_disk(app), build_fab_from_disk(staged)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest()
    names = set(fab_files(app))
    assert {"pfms_client/data/io.py", "keep/outputs/kept.py", "deep/a/b/c/d/e/f/g/h/module.py",
            "tests/helpers.py", "README.md"} <= names
    assert not names & {"outputs/run.json", "tests/test_x.py", "notes.txt", "linked.md",
                        ".venv/lib/python3.11/site-packages/pkg/mod.py", "build/lib/pfms_client/__init__.py"}


def test_with_this_projects_fab_include_the_stage_is_the_same_fab(tmp_path):
    app = _app(tmp_path, (REPO / ".gitignore").read_text(), (REPO / "pyproject.toml").read_text())
    staged = stage_app(app, tmp_path / "stage")
    assert build_fab_from_disk(staged) == build_fab_from_disk(app)
    assert set(fab_files(app)) == {".gitignore", "pyproject.toml", "pfms_client/__init__.py",
                                   "pfms_client/data/io.py", "pfms_server/__init__.py", "conf/config.yaml"}


def test_a_gitignore_negation_keeps_every_folder_walked(tmp_path):
    """With "!name" a file below an ignored folder may come back: nothing is pruned by .gitignore."""
    app = _app(tmp_path, "docs/\n!docs/notes.md\n.venv/\n")
    staged = stage_app(app, tmp_path / "stage")
    assert build_fab_from_disk(staged) == build_fab_from_disk(app)
