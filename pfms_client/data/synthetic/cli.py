"""Write synthetic AliExpress-layout scenarios to disk (``pfms-generate``).

``pfms-generate --out DIR --scenarios NL ES FR US`` writes one folder per
scenario (train.csv, test.csv, meta.json) and ``DIR/meta.json``, atomically;
``--rows-train-by-scenario NL=100000 ES=30000`` gives the named scenarios their own
train rows (the others keep ``--rows-train``), and ``--set KNOB=JSON`` sets any
other generator knob. A training run needs no such
step: ``load_scenario`` generates a configured scenario on first use. Any size
streams in bounded memory (10 million rows: see the README); a scenario that
takes more than a few seconds prints a progress line (rows/s, ETA) on stderr.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import META_FILE
from .aliexpress import generate
from .params import GeneratorParams

_DEFAULTS = GeneratorParams()


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``pfms-generate --out data/synthetic --scenarios NL ES FR US --set ctr_range=[0.02,0.04]``."""
    parser = argparse.ArgumentParser(prog="pfms-generate", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (one subfolder per scenario)")
    parser.add_argument("--scenarios", nargs="+", default=["NL", "ES", "FR", "US"])
    parser.add_argument("--rows-train", type=int, default=_DEFAULTS.rows_train)
    parser.add_argument(
        "--rows-train-by-scenario",
        nargs="+",
        default=[],
        metavar="SCENARIO=ROWS",
        help="train rows of the named scenarios (others: --rows-train), e.g. NL=100000 ES=30000",
    )
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
    if args.rows_train_by_scenario:
        by_scenario: dict[str, Any] = {}
        for item in args.rows_train_by_scenario:
            name, sep, rows = item.partition("=")
            if not sep or not name:
                parser.error(f"--rows-train-by-scenario expects SCENARIO=ROWS, got {item!r}")
            try:
                by_scenario[name] = int(rows)
            except ValueError:
                parser.error(f"--rows-train-by-scenario {name}: {rows!r} is not an integer")
        knobs["rows_train_by_scenario"] = by_scenario
    try:
        GeneratorParams.from_dict(
            {"rows_train": args.rows_train, "rows_test": args.rows_test, "seed": args.seed, **knobs},
            scenarios=args.scenarios,
        )
    except ValueError as exc:  # one line naming the knob, not a traceback
        parser.error(str(exc))
    metas = generate(args.out, args.scenarios, args.rows_train, args.rows_test, args.seed, **knobs)
    for scenario, meta in metas.items():
        tr, te = meta["train"], meta["test"]
        print(
            f"{scenario}: train {meta['rows']['train']} rows CTR {tr['ctr']:.4f} CTCVR {tr['ctcvr']:.4f} | "
            f"test {meta['rows']['test']} rows CTR {te['ctr']:.4f} CTCVR {te['ctcvr']:.4f} | "
            f"oracle test AUC ctr {meta['oracle_auc_test']['ctr']} ctcvr {meta['oracle_auc_test']['ctcvr']}"
        )
    print(f"wrote {Path(args.out) / META_FILE}")


if __name__ == "__main__":
    main()
