"""Compose the Hydra config from conf/ plus user overrides (both apps use this).

Client and server compose the same config from the same run-config string, so
they always agree on the dataset, model and strategy without shipping it.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
from pathlib import Path
from typing import Sequence

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
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=args)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        # One line; Hydra's "Config search path: ..." tail says nothing about the override.
        reason = " ".join(str(exc).split("Config search path:")[0].split())
        raise ConfigError(f"bad config override in {args}: {reason}") from exc
    check_client_config(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg
