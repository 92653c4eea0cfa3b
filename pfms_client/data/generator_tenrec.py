"""Write synthetic Tenrec-layout scenarios and generate missing ones on demand.

Output: ``{out}/{scenario}.csv`` (the Tenrec video columns) with a
``{scenario}.meta.json`` sidecar (params, target and measured rates, oracle
AUCs), plus ``{out}/meta.json`` indexing all scenarios present. The test rows
are held out by the Tenrec reader (``dataset.split``), not here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .files import RATE_DIGITS, check_made_with, publish_scenario_file
from .generator import _auc
from .settings import DatasetSettings
from .synthetic_tenrec import (
    COLUMNS,
    LABELS,
    TenrecArrays,
    TenrecGeneratorParams,
    simulate_tenrec_scenario,
)

DEFAULT_FILE = "{scenario}.csv"


def generate_tenrec(
    out_dir: str | os.PathLike[str], scenarios: Sequence[str], **knobs: Any
) -> dict[str, dict[str, Any]]:
    """Generate (or regenerate) ``{out_dir}/{scenario}.csv`` for each scenario; returns the metas."""
    params = TenrecGeneratorParams.from_dict(knobs)
    return {
        s: write_tenrec_scenario(Path(out_dir) / DEFAULT_FILE.format(scenario=s), s, params)
        for s in scenarios
    }


def write_tenrec_scenario(path: Path, scenario: str, params: TenrecGeneratorParams) -> dict[str, Any]:
    """Simulate one scenario and publish its CSV and meta atomically."""
    arrays = simulate_tenrec_scenario(scenario, params)
    meta = _scenario_meta(arrays, params, path.name)
    publish_scenario_file(
        path,
        COLUMNS,
        [arrays.columns[c] for c in COLUMNS],
        [None] * len(COLUMNS),
        meta,
        scenario,
    )
    return meta


def ensure_tenrec_generated(settings: DatasetSettings, scenarios: Sequence[str]) -> None:
    """Generate the scenarios whose files are missing; an existing file must match the knobs."""
    if settings.generator is None:
        return
    if "{scenario}" not in str(settings.scenario_file):
        raise ValueError("dataset.generator needs a scenario_file containing '{scenario}'")
    params = TenrecGeneratorParams.from_dict(settings.generator)
    for scenario in scenarios:
        settings.check_scenario(scenario)
        path = settings.scenario_path(scenario)
        if not path.is_file():
            write_tenrec_scenario(path, scenario, params)
        check_made_with(
            path,
            params.to_dict(),
            f"delete {path} to regenerate, or point dataset.root elsewhere",
        )


def _scenario_meta(
    arrays: TenrecArrays, params: TenrecGeneratorParams, file_name: str
) -> dict[str, Any]:
    cols = arrays.columns
    clicks = cols["click"] == 1
    rates = {label: round(float(cols[label].mean()), RATE_DIGITS) for label in LABELS}
    given_click = {
        f"{label}_given_click": round(float(cols[label][clicks].mean()), RATE_DIGITS)
        if clicks.any()
        else None
        for label in LABELS
        if label != "click"
    }
    return {
        "scenario": arrays.scenario,
        "params": params.to_dict(),
        "file": file_name,
        "rows": params.rows,
        "users": int(np.unique(cols["user_id"]).size),
        "items": int(np.unique(cols["item_id"]).size),
        "targets": {k: round(v, RATE_DIGITS) for k, v in arrays.targets.items()},
        "rates": {**rates, **given_click},
        "oracle_auc": {
            "click": _auc(cols["click"], arrays.probabilities["click"]),
            "like": _auc(cols["like"], arrays.probabilities["like"]),
        },
    }
