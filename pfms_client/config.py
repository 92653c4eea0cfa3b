"""Compose the Hydra config from conf/ plus user overrides (both apps use this).

Client and server compose the same config from the same run-config string, so
they always agree on the dataset, model and strategy without shipping it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shlex
import tempfile
from pathlib import Path
from typing import Sequence

import hydra
import omegaconf
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONF_ENV = "PFMS_CONF_DIR"


class ConfigError(ValueError):
    """A bad override or config value, with the offending key in the message."""


def conf_dir() -> Path:
    """$PFMS_CONF_DIR, else conf/ beside the packages (a checkout, an editable install,
    Flower's unpacked FAB), else the copy a wheel installs as the package pfms_conf."""
    if env := os.environ.get(CONF_ENV):
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent / "conf"
    if (here / "config.yaml").is_file():
        return here
    spec = importlib.util.find_spec("pfms_conf")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / "config.yaml").is_file():
            return Path(location)
    raise ConfigError(f"cannot find conf/config.yaml next to the packages ({here}) nor an installed "
                      f"pfms_conf package; set {CONF_ENV}")


def parse_overrides(overrides: str | Sequence[str] | None) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return shlex.split(overrides)
    return [str(o) for o in overrides]


def load_config(overrides: str | Sequence[str] | None = None) -> DictConfig:
    """Compose conf/config.yaml and check every value the client package uses
    (pfms_client.config_check); unknown keys and bad values raise ConfigError.

    The server's keys (strategy.algorithm, conflict, ...) are checked on top by
    pfms_server.config_check.load_run_config, which the server entry points use.
    """
    from .config_check import check_client_config  # it imports ConfigError from here

    args = parse_overrides(overrides)
    key = _compose_key(args)
    if key in _COMPOSED:
        return _COMPOSED[key]
    cfg = _cached(key)
    if cfg is None:
        try:
            with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
                cfg = compose(config_name="config", overrides=args)
            OmegaConf.resolve(cfg)
        except (HydraException, OmegaConfBaseException) as exc:
            # One line; Hydra's "Config search path: ..." tail says nothing about the override.
            reason = " ".join(str(exc).split("Config search path:")[0].split())
            raise ConfigError(f"bad config override in {args}: {reason}") from exc
        check_client_config(cfg)
        _store(key, cfg)
    OmegaConf.set_readonly(cfg, True)
    if len(_COMPOSED) >= _COMPOSED_MAX:
        _COMPOSED.pop(next(iter(_COMPOSED)))
    _COMPOSED[key] = cfg
    return cfg


# Composed configs of this process. A Hydra compose costs 0.3-0.5 s of CPU, and one
# process often composes the same config more than once (the ServerApp and the
# in-process ClientApps of a simulation or of pfms-compare, a CLI that checks and then
# runs). The result is read-only, so callers can share it. The key holds everything the
# result depends on: the overrides, the conf files (path, size, mtime), the environment
# variables that conf/config.yaml reads, and the versions of Hydra and OmegaConf.
_COMPOSED: dict[tuple, DictConfig] = {}
_COMPOSED_MAX = 32
_CONFIG_ENV = ("PFMS_HOME", "HOME")

# Composed configs across processes, as JSON files under $PFMS_HOME/cache/config (else
# ~/.pfms/cache/config, the default paths.home). A deployed node runs every message in a
# fresh ClientApp process, so without them each message composed again: half of a small
# ClientApp's CPU. A file is named by the hash of the whole key and holds the resolved,
# checked config; it is written whole (temporary file, then rename), read with the checks
# run again, and any problem reading it means composing as if it were absent. Only the
# newest _CACHE_MAX files are kept.
_CACHE_FORMAT = 1
_CACHE_MAX = 256


def _compose_key(args: list[str]) -> tuple:
    root = conf_dir()
    files = tuple(sorted((str(p.relative_to(root)), st.st_size, st.st_mtime_ns)
                         for p in root.rglob("*.yaml") for st in [p.stat()]))
    return (tuple(args), str(root), files, tuple(os.environ.get(v) for v in _CONFIG_ENV),
            (_CACHE_FORMAT, hydra.__version__, omegaconf.__version__))


def pfms_home() -> Path:
    """$PFMS_HOME, else ~/.pfms: conf/config.yaml's default paths.home, for what must be
    found before (or without) a composed config: the prepared stores' default root and
    this module's cache."""
    return Path(os.environ.get("PFMS_HOME") or Path.home() / ".pfms")


def cache_dir() -> Path:
    """Where composed configs are kept between processes."""
    return pfms_home() / "cache" / "config"


def _cache_file(key: tuple) -> Path:
    return cache_dir() / (hashlib.sha256(repr(key).encode()).hexdigest() + ".json")


def _cached(key: tuple) -> DictConfig | None:
    from .config_check import check_client_config

    try:
        data = json.loads(_cache_file(key).read_text())
        if data["key"] != json.loads(json.dumps(key)):  # a hash collision or a foreign file
            return None
        cfg = OmegaConf.create(data["config"])
        OmegaConf.set_struct(cfg, True)  # as Hydra's compose returns it
        check_client_config(cfg)
        return cfg
    except Exception:  # noqa: BLE001  absent, partial or stale: compose instead
        return None


def _store(key: tuple, cfg: DictConfig) -> None:
    """Keep a composed config for other processes; a cache that cannot be written is skipped."""
    path = _cache_file(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = json.dumps({"key": key, "config": OmegaConf.to_container(cfg)})
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as fh:
            fh.write(text)
        os.replace(fh.name, path)
        files = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
        for old in files[:-_CACHE_MAX]:
            old.unlink(missing_ok=True)
    except OSError:
        pass
