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
from .synthetic import GeneratorParams
from .synthetic_tenrec import TenrecGeneratorParams

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
# Raw-file sources by `source.kind`: their keys, all required (values: see movielens.py).
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
            seed=int(split_node["seed"]),
            test_fraction=(
                _fraction(split_node["test_fraction"], "dataset.split.test_fraction", open_top=True)
                if "test_fraction" in split_node
                else None
            ),
            test_seed=int(split_node["test_seed"]) if "test_seed" in split_node else None,
        )

        vocab = node.get("vocab") or {}
        check_keys(vocab, "dataset.vocab", ("min_count",))
        min_count = int(vocab.get("min_count", 1))
        if min_count < 1:
            raise ValueError("dataset.vocab.min_count must be >= 1")

        transform = node.get("numeric_transform", "none")
        if transform not in NUMERIC_TRANSFORMS:
            raise ValueError(
                f"dataset.numeric_transform: {transform!r} is not one of {list(NUMERIC_TRANSFORMS)}"
            )

        scenarios = node["scenarios"]
        if isinstance(scenarios, str) or not scenarios:
            raise ValueError("dataset.scenarios: expected a non-empty list of names")
        if len(set(scenarios)) != len(scenarios):
            raise ValueError(f"dataset.scenarios: duplicate names in {list(scenarios)}")

        max_rows = node.get("max_rows")
        if max_rows is not None and int(max_rows) < 1:
            raise ValueError("dataset.max_rows must be >= 1 or null")

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
            max_rows=None if max_rows is None else int(max_rows),
            generator=generator,
            source=source,
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
    v = float(value)
    ok = (0.0 < v < 1.0) if open_top else (0.0 <= v < 1.0)
    if not ok:
        interval = "(0, 1)" if open_top else "[0, 1)"
        raise ValueError(f"{where}: {v} is not in {interval}")
    return v
