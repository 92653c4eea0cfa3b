"""The files ``flwr run`` would send of an app folder, copied to a folder of their own.

``flwr run <app>`` builds its FAB by listing every file under ``<app>``
(``flwr.cli.utils.collect_files`` resolves each path) and filtering afterwards. A
checkout with its venv inside, as the README's commands make it, holds about 49,000
files for a FAB of about 100: listing them cost 7.2 s of the 8.7 s FAB build on the
2-core development machine (2026-11-30), paid by every ``pfms-run`` before the first
round. ``stage_app`` lists the folder without descending into folders the FAB can never
hold (ignored by the app's .gitignore or by Flower's own exclude patterns), applies
Flower's own FAB filters to the rest and copies what passes, so that ``flwr run`` on
the stage builds the same FAB: the same bytes, hence the same hash (tested).
"""

from __future__ import annotations

import os
import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path

from flwr.cli.build import get_filtered_fab_paths
from flwr.cli.utils import build_pathspec, filter_paths_for_publish, load_gitignore_patterns
from flwr.common.constant import FAB_CONFIG_FILE, FAB_EXCLUDE_PATTERNS
from flwr.supercore.constant import APP_PUBLISH_EXCLUDE_PATTERNS

# A file name no exclude pattern names by itself: a folder whose probe is excluded has
# every file under it excluded (Flower's folder patterns, e.g. ".venv/**", "build/**").
_PROBE = "pfms-stage-probe.py"


def _folder_filter(app: Path) -> Callable[[str], bool]:
    """``dropped(rel)``: true for a folder (posix path relative to ``app``) that no FAB file can lie under."""
    gitignore = load_gitignore_patterns(app / ".gitignore")
    # With a negation ("!keep.py") git can bring a file back below an ignored name;
    # pathspec decides per file, so only a .gitignore without one may prune folders.
    prune_ignored = not any(p.lstrip().startswith("!") for p in gitignore)
    ignored = build_pathspec(gitignore)
    excluded = build_pathspec([*FAB_EXCLUDE_PATTERNS, *APP_PUBLISH_EXCLUDE_PATTERNS])

    def dropped(rel: str) -> bool:
        probe = f"{rel}/{_PROBE}"
        return excluded.match_file(probe) or (prune_ignored and (ignored.match_file(rel + "/")
                                                                 or ignored.match_file(probe)))
    return dropped


def fab_files(app: Path) -> dict[str, Path]:
    """The app's files that go into its FAB (relative posix path -> file), as ``flwr run`` picks them."""
    app = app.expanduser().resolve()
    dropped = _folder_filter(app)
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(app, followlinks=False):
        here = Path(dirpath)
        rel_dir = here.relative_to(app).as_posix()
        dirnames[:] = [d for d in dirnames
                       if not dropped(d if rel_dir == "." else f"{rel_dir}/{d}")]
        for name in filenames:
            path = here / name
            if path.is_symlink() or not path.resolve().is_relative_to(app):  # as collect_files
                continue
            files[path.relative_to(app).as_posix()] = path
    published = filter_paths_for_publish(files)
    if FAB_CONFIG_FILE not in published:
        raise ValueError(f"{app}: no {FAB_CONFIG_FILE} (not a Flower app)")
    config = tomllib.loads(Path(published[FAB_CONFIG_FILE]).read_text(encoding="utf-8"))
    keep = {FAB_CONFIG_FILE, ".gitignore", *get_filtered_fab_paths(published, config)}
    return {rel: Path(path) for rel, path in published.items() if rel in keep}


def stage_app(app: Path, dest: Path) -> Path:
    """Copy ``app``'s FAB files into ``dest`` (a new folder); returns ``dest``."""
    dest.mkdir(parents=True)
    for rel, path in fab_files(app).items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return dest
