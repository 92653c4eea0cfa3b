"""Typed view of the ``dataset`` config node: where the files are and how to split/encode them.

Every key is checked, and keys that only make sense for the other layout are
rejected (generator knobs too: each layout has its own generator), so a typo
never falls back to a silent default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config_utils import check_keys, to_plain
from .schema import DatasetSchema
from .synthetic.params import GeneratorParams, TenrecGeneratorParams

LAYOUTS = ("aliexpress", "tenrec")
NUMERIC_TRANSFORMS = ("none", "standardize")

_COMMON_KEYS = (
    "name",
    "layout",
    "root",
    "scenarios",
    "schema",
    "split",
    "vocab",
    "numeric_transform",
    "max_rows",
    "generator",
    "store_dir",
)
_LAYOUT_KEYS = {
    "aliexpress": ("scenario_dir", "train_file", "test_file"),
    "tenrec": ("scenario_file",),
}
# Optional per layout: a `source` converts downloaded raw files into scenario files.
_OPTIONAL_LAYOUT_KEYS = {"aliexpress": (), "tenrec": ("source",)}
# Each layout has its own generator, so its own knobs.
_GENERATOR_KNOBS = {
    "aliexpress": GeneratorParams.knob_names(),
    "tenrec": TenrecGeneratorParams.knob_names(),
}
# Raw-file sources by `source.kind`: their keys, all required (values: see movielens/convert.py).
_SOURCE_KEYS = {
    "movielens-100k": ("kind", "raw_dir", "grouping", "groups", "like_min_rating", "love_min_rating"),
}
_SPLIT_KEYS = {
    # aliexpress: the test split is given by the files (by time in the real data).
    "aliexpress": ("val_fraction", "seed"),
    # tenrec: one file per scenario, test rows drawn with their own fixed seed.
    "tenrec": ("val_fraction", "seed", "test_fraction", "test_seed"),
}


@dataclass(frozen=True)
class SplitSettings:
    """Seeded random held-out parts. ``test_*`` only for single-file layouts."""

    val_fraction: float
    seed: int
    test_fraction: float | None = None
    test_seed: int | None = None


@dataclass(frozen=True)
class DatasetSettings:
    """Everything the readers and the tensoriser need from ``dataset``."""

    name: str
    layout: str
    root: Path
    scenarios: tuple[str, ...]
    schema: DatasetSchema
    split: SplitSettings
    min_count: int
    numeric_transform: str
    scenario_dir: str | None = None
    train_file: str | None = None
    test_file: str | None = None
    scenario_file: str | None = None
    max_rows: int | None = None
    generator: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    store_dir: Path | None = None  # prepared stores (store.py); None = $PFMS_HOME/prepared

    @classmethod
    def from_config(cls, dataset_cfg: Any) -> DatasetSettings:
        node = to_plain(dataset_cfg)
        if not isinstance(node, Mapping):
            raise ValueError("dataset: expected a mapping")
        layout = node.get("layout")
        if layout not in LAYOUTS:
            raise ValueError(f"dataset.layout: {layout!r} is not one of {list(LAYOUTS)}")
        layout_keys = _LAYOUT_KEYS[layout]
        required = ("name", "layout", "root", "scenarios", "schema", "split") + layout_keys
        check_keys(
            node, "dataset", _COMMON_KEYS + layout_keys + _OPTIONAL_LAYOUT_KEYS[layout], required
        )
        generator = _generator(node.get("generator"), layout)
        source = _source(node.get("source"))
        if generator is not None and source is not None:
            raise ValueError("dataset: 'generator' and 'source' exclude each other")

        split_node = node["split"]
        split_keys = _SPLIT_KEYS[layout]
        check_keys(split_node, "dataset.split", split_keys, split_keys)
        split = SplitSettings(
            val_fraction=_fraction(split_node["val_fraction"], "dataset.split.val_fraction"),
            seed=_int(split_node["seed"], "dataset.split.seed", 0),
            test_fraction=(
                _fraction(split_node["test_fraction"], "dataset.split.test_fraction", open_top=True)
                if "test_fraction" in split_node
                else None
            ),
            test_seed=(
                _int(split_node["test_seed"], "dataset.split.test_seed", 0)
                if "test_seed" in split_node
                else None
            ),
        )

        vocab = node.get("vocab") or {}
        check_keys(vocab, "dataset.vocab", ("min_count",))
        min_count = _int(vocab.get("min_count", 1), "dataset.vocab.min_count", 1)

        transform = node.get("numeric_transform", "none")
        if transform not in NUMERIC_TRANSFORMS:
            raise ValueError(
                f"dataset.numeric_transform: {transform!r} is not one of {list(NUMERIC_TRANSFORMS)}"
            )

        scenarios = node["scenarios"]
        if not isinstance(scenarios, (list, tuple)) or not scenarios or not all(
            _is_name(s) for s in scenarios
        ):
            raise ValueError(f"dataset.scenarios={scenarios!r}: expected a non-empty list of names")
        if len({str(s) for s in scenarios}) != len(scenarios):
            raise ValueError(f"dataset.scenarios: duplicate names in {list(scenarios)}")
        for key in ("name", "root", *layout_keys):
            if not _is_name(node[key]):
                raise ValueError(f"dataset.{key}={node[key]!r}: expected a non-empty string")
        for key in ("scenario_dir", "scenario_file"):
            if key in node and len(scenarios) > 1 and "{scenario}" not in str(node[key]):
                raise ValueError(
                    f"dataset.{key}={node[key]!r}: expected '{{scenario}}' in it, "
                    "or every scenario reads the same data"
                )

        store_dir = node.get("store_dir")
        if store_dir is not None and not _is_name(store_dir):
            raise ValueError(f"dataset.store_dir={store_dir!r}: expected a non-empty string (a folder) or null")

        max_rows = node.get("max_rows")
        if max_rows is not None:
            max_rows = _int(max_rows, "dataset.max_rows", 1, nullable=True)

        return cls(
            name=str(node["name"]),
            layout=layout,
            root=Path(str(node["root"])),
            scenarios=tuple(str(s) for s in scenarios),
            schema=DatasetSchema.from_schema_node(node["schema"]),
            split=split,
            min_count=min_count,
            numeric_transform=transform,
            scenario_dir=node.get("scenario_dir"),
            train_file=node.get("train_file"),
            test_file=node.get("test_file"),
            scenario_file=node.get("scenario_file"),
            max_rows=max_rows,
            generator=generator,
            source=source,
            store_dir=Path(str(store_dir)) if store_dir is not None else None,
        )

    def check_scenario(self, scenario: str) -> None:
        if scenario not in self.scenarios:
            raise ValueError(
                f"scenario {scenario!r} is not in dataset.scenarios {list(self.scenarios)}"
            )

    def scenario_path(self, scenario: str) -> Path:
        """Folder (aliexpress) or file (tenrec) holding one scenario's rows."""
        if self.layout == "aliexpress":
            return self.root / str(self.scenario_dir).format(scenario=scenario)
        return self.root / str(self.scenario_file).format(scenario=scenario)

    def train_path(self, scenario: str) -> Path:
        return self.scenario_path(scenario) / str(self.train_file).format(scenario=scenario)

    def test_path(self, scenario: str) -> Path:
        return self.scenario_path(scenario) / str(self.test_file).format(scenario=scenario)


def _generator(node: Any, layout: str) -> dict[str, Any] | None:
    """Knob names checked here, per layout; values by the generator's params class."""
    if node is None:
        return None
    check_keys(node, f"dataset.generator ({layout} layout)", _GENERATOR_KNOBS[layout])
    return dict(node)


def _source(node: Any) -> dict[str, Any] | None:
    if node is None:
        return None
    if not isinstance(node, Mapping) or node.get("kind") not in _SOURCE_KEYS:
        kind = node.get("kind") if isinstance(node, Mapping) else None
        raise ValueError(f"dataset.source.kind: {kind!r} is not one of {sorted(_SOURCE_KEYS)}")
    keys = _SOURCE_KEYS[node["kind"]]
    check_keys(node, "dataset.source", keys, keys)
    return dict(node)


def _fraction(value: Any, where: str, open_top: bool = False) -> float:
    """val_fraction may be 0 (no validation split); a test fraction must be in (0, 1)."""
    interval = "(0, 1)" if open_top else "[0, 1)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}={value!r}: expected a number in {interval}")
    v = float(value)
    ok = (0.0 < v < 1.0) if open_top else (0.0 <= v < 1.0)
    if not ok:
        raise ValueError(f"{where}={value!r}: expected a number in {interval}")
    return v


def _int(value: Any, where: str, low: int, nullable: bool = False) -> int:
    """An integer >= ``low``: no bool, float or string (a bare int() would take "7" and True)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{where}={value!r}: expected an integer >= {low}" + (" or null" if nullable else ""))
    return value


def _is_name(value: Any) -> bool:
    """A non-empty string (Hydra reads an unquoted number as an int, so ints pass too)."""
    return (isinstance(value, str) and value.strip() != "") or (
        isinstance(value, int) and not isinstance(value, bool)
    )
