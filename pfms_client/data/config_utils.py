"""Helpers to read Hydra/OmegaConf nodes and plain dicts the same way."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def to_plain(node: Any) -> Any:
    """Resolve an OmegaConf node (interpolations included) into dicts/lists.

    Plain Python containers pass through unchanged, so tests and scripts can
    hand in dicts without building a Hydra config.
    """
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return node
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def check_keys(
    node: Mapping[str, Any],
    where: str,
    allowed: Iterable[str],
    required: Iterable[str] = (),
) -> None:
    """Fail loudly on a typo'd or missing key instead of silently using a default."""
    if not isinstance(node, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(node).__name__}")
    allowed = set(allowed)
    unknown = sorted(set(node) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(allowed)}")
    missing = [k for k in required if k not in node]
    if missing:
        raise ValueError(f"{where}: missing required key(s) {missing}")
