"""Write synthetic scenarios to disk (atomically) and generate missing ones on demand.

Output: ``{out}/{scenario}/train.csv``, ``test.csv`` and ``meta.json`` (params,
target and measured rates, oracle AUCs), plus ``{out}/meta.json`` indexing all
scenarios present. A scenario folder is built in a temp dir and renamed into
place, so readers never see a half-written folder, and four Flower clients can
call ``ensure_generated`` for their own scenarios at the same time.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .csv_writer import write_csv
from .errors import DataValidationError
from .files import META_FILE, RATE_DIGITS, staged_folder, update_index, write_json
from .settings import DatasetSettings
from .synthetic import COLUMNS, NUMERICAL, GeneratorParams, ScenarioArrays, simulate_scenario

@dataclass(frozen=True)
class OutputNames:
    """Where a scenario's files go inside ``out_dir`` (the ``dataset`` config's names)."""

    scenario_dir: str = "{scenario}"
    train_file: str = "train.csv"
    test_file: str = "test.csv"

    def folder(self, out_dir: Path, scenario: str) -> Path:
        return out_dir / self.scenario_dir.format(scenario=scenario)

    def files(self, scenario: str) -> dict[str, str]:
        """``{"train": name, "test": name}``; names may contain ``{scenario}`` too."""
        return {
            "train": self.train_file.format(scenario=scenario),
            "test": self.test_file.format(scenario=scenario),
        }


_DEFAULTS = GeneratorParams()


def generate(
    out_dir: str | os.PathLike[str],
    scenarios: Sequence[str],
    rows_train: int = _DEFAULTS.rows_train,
    rows_test: int = _DEFAULTS.rows_test,
    seed: int = _DEFAULTS.seed,
    **knobs: Any,
) -> dict[str, dict[str, Any]]:
    """Generate (or regenerate) every scenario; returns each scenario's meta."""
    return {
        s: generate_scenario(out_dir, s, rows_train, rows_test, seed, **knobs) for s in scenarios
    }


def generate_scenario(
    out_dir: str | os.PathLike[str],
    scenario: str,
    rows_train: int = _DEFAULTS.rows_train,
    rows_test: int = _DEFAULTS.rows_test,
    seed: int = _DEFAULTS.seed,
    **knobs: Any,
) -> dict[str, Any]:
    """Generate one scenario alone; byte-identical to the same scenario in a full run."""
    params = GeneratorParams.from_dict(
        {"rows_train": rows_train, "rows_test": rows_test, "seed": seed, **knobs}
    )
    return write_scenario(Path(out_dir), scenario, params, OutputNames(), overwrite=True)


def write_scenario(
    out_dir: Path, scenario: str, params: GeneratorParams, names: OutputNames, overwrite: bool
) -> dict[str, Any]:
    """Simulate, write into a temp dir, rename into place, update the index."""
    arrays = simulate_scenario(scenario, params)
    meta = _scenario_meta(arrays, params, names)
    with staged_folder(names.folder(out_dir, scenario), overwrite) as tmp:
        decimals = [params.float_decimals if c in NUMERICAL else None for c in COLUMNS]
        for part, file_name in names.files(scenario).items():
            cols = arrays.part(part)
            write_csv(tmp / file_name, COLUMNS, [cols[c] for c in COLUMNS], decimals)
        write_json(tmp / META_FILE, meta)
    update_index(out_dir, scenario, meta)
    return meta


def ensure_generated(cfg_dataset: Any, scenarios: Sequence[str] | None = None) -> None:
    """Generate the configured scenarios whose folders are missing; check existing ones.

    No-op for a dataset without a ``generator`` node; a Tenrec-layout dataset
    gets one file per scenario (``generator_tenrec``). An existing folder made
    with other generator parameters is an error rather than silently reused.
    """
    settings = (
        cfg_dataset
        if isinstance(cfg_dataset, DatasetSettings)
        else DatasetSettings.from_config(cfg_dataset)
    )
    if settings.generator is None:
        return
    if settings.layout == "tenrec":
        from .generator_tenrec import ensure_tenrec_generated  # imports this module

        ensure_tenrec_generated(
            settings, list(scenarios) if scenarios is not None else settings.scenarios
        )
        return
    if "{scenario}" not in str(settings.scenario_dir):
        raise ValueError("dataset.generator needs a scenario_dir containing '{scenario}'")
    params = GeneratorParams.from_dict(settings.generator)
    names = OutputNames(
        str(settings.scenario_dir), str(settings.train_file), str(settings.test_file)
    )
    for scenario in scenarios if scenarios is not None else settings.scenarios:
        settings.check_scenario(scenario)
        folder = names.folder(settings.root, scenario)
        if not folder.is_dir():
            write_scenario(settings.root, scenario, params, names, overwrite=False)
        _check_existing(folder, params)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``pfms-generate --out data/synthetic --scenarios NL ES FR US --set ctr_range=[0.02,0.04]``."""
    parser = argparse.ArgumentParser(prog="pfms-generate", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (one subfolder per scenario)")
    parser.add_argument("--scenarios", nargs="+", default=["NL", "ES", "FR", "US"])
    parser.add_argument("--rows-train", type=int, default=_DEFAULTS.rows_train)
    parser.add_argument("--rows-test", type=int, default=_DEFAULTS.rows_test)
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    knob_names = sorted(GeneratorParams.knob_names())
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KNOB=JSON",
        help=f"any other generator knob, value as JSON; knobs: {', '.join(knob_names)}",
    )
    args = parser.parse_args(argv)
    knobs: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KNOB=VALUE, got {item!r}")
        try:
            knobs[key] = json.loads(value)
        except json.JSONDecodeError:
            parser.error(f"--set {key}: value {value!r} is not valid JSON")
    metas = generate(args.out, args.scenarios, args.rows_train, args.rows_test, args.seed, **knobs)
    for scenario, meta in metas.items():
        tr, te = meta["train"], meta["test"]
        print(
            f"{scenario}: train {meta['rows']['train']} rows CTR {tr['ctr']:.4f} CTCVR {tr['ctcvr']:.4f} | "
            f"test {meta['rows']['test']} rows CTR {te['ctr']:.4f} CTCVR {te['ctcvr']:.4f} | "
            f"oracle test AUC ctr {meta['oracle_auc_test']['ctr']} ctcvr {meta['oracle_auc_test']['ctcvr']}"
        )
    print(f"wrote {Path(args.out) / META_FILE}")


def _scenario_meta(
    arrays: ScenarioArrays, params: GeneratorParams, names: OutputNames
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "scenario": arrays.scenario,
        "params": params.to_dict(),
        "files": names.files(arrays.scenario),
        "rows": {"train": params.rows_train, "test": params.rows_test},
        "targets": {k: round(v, RATE_DIGITS) for k, v in arrays.targets.items()},
    }
    for part in ("train", "test"):
        cols = arrays.part(part)
        click, conv = cols["click"], cols["conversion"]
        meta[part] = {
            "clicks": int(click.sum()),
            "conversions": int(conv.sum()),
            "ctr": round(float(click.mean()), RATE_DIGITS),
            "ctcvr": round(float(conv.mean()), RATE_DIGITS),
        }
    test_cols = arrays.part("test")
    test_p = arrays.part("test", arrays.probabilities)
    meta["oracle_auc_test"] = {
        "ctr": _auc(test_cols["click"], test_p["click"]),
        "ctcvr": _auc(test_cols["conversion"], test_p["conversion"]),
    }
    return meta


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Rank AUC of the true probabilities: the ceiling any model can reach on this split."""
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(score)
    auc = (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return round(float(auc), 4)


def _average_ranks(score: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (as scipy's rankdata, without importing scipy)."""
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1
    return (first_rank + (counts - 1) / 2.0)[inverse]


def _check_existing(folder: Path, params: GeneratorParams) -> None:
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise DataValidationError(
            meta_path, "scenario folder exists but was not made by the generator (no meta.json)"
        )
    found = json.loads(meta_path.read_text()).get("params", {})
    wanted = params.to_dict()
    diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    if diff:
        details = ", ".join(
            f"{k}: {found.get(k)!r} on disk vs {wanted.get(k)!r} configured" for k in diff
        )
        raise DataValidationError(
            meta_path,
            f"generated with other parameters ({details}); delete {folder} to regenerate, "
            "or point dataset.root elsewhere",
        )


if __name__ == "__main__":
    main()
