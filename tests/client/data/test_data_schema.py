"""Schema and dataset settings: expansion of column specs and strict key checking."""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONF_DATASET as CONF
from pfms_client.data.schema import DatasetSchema
from pfms_client.data.settings import DatasetSettings
from pfms_client.data.synthetic.aliexpress import COLUMNS
from pfms_client.data.synthetic.params import GeneratorParams


def _dataset(name: str, seed: int = 3, data: str = "/data"):
    root = OmegaConf.create({"seed": seed, "paths": {"data": data}})
    root.dataset = OmegaConf.load(CONF / f"{name}.yaml")
    return root.dataset


def test_range_specs_expand_to_the_aliexpress_columns():
    schema = DatasetSchema.from_config(_dataset("synthetic"))
    assert schema.categorical[0] == "categorical_1" and schema.categorical[-1] == "categorical_16"
    assert len(schema.numerical) == 63 and schema.numerical[-1] == "numerical_63"
    assert schema.columns == COLUMNS  # declaration order = the generator's file order
    assert schema.task_names == ["ctr", "ctcvr"] and schema.num_tasks == 2
    assert schema.tasks[1].all_of == ("click", "conversion")
    assert schema.constraints[0].label == "conversion" and schema.constraints[0].requires == "click"


def test_plain_dict_and_explicit_lists_work():
    schema = DatasetSchema.from_schema_node(
        {
            "categorical": ["u", "i"],
            "numerical": {"prefix": "n", "start": 0, "count": 2},
            "labels": ["a", "b", "c"],
            "tasks": [{"name": "t", "all_of": "a"}],
        }
    )
    assert schema.numerical == ("n0", "n1")
    assert schema.tasks[0].all_of == ("a",)
    assert schema.id_columns == () and schema.constraints == ()


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda s: s.update(label=["click"]), "label"),
        (lambda s: s["categorical"].update(stop=3), "stop"),
        (lambda s: s["tasks"][0].update(any_of=["click"]), "any_of"),
        (lambda s: s["constraints"][0].update(implies="click"), "implies"),
    ],
)
def test_unknown_schema_keys_are_rejected_by_name(edit, needle):
    node = OmegaConf.to_container(_dataset("synthetic").schema)
    edit(node)
    with pytest.raises(ValueError, match=needle):
        DatasetSchema.from_schema_node(node)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda s: s["tasks"].append({"name": "ctr", "all_of": ["click"]}), "duplicate task"),
        (lambda s: s["tasks"].append({"name": "x", "all_of": ["buy"]}), "buy"),
        (lambda s: s.update(tasks=[]), "at least one task"),
        (lambda s: s.update(id_columns=["click"]), "declared twice"),
        (lambda s: s["constraints"].append({"label": "buy", "requires": "click"}), "buy"),
    ],
)
def test_inconsistent_schema_is_rejected(edit, needle):
    node = OmegaConf.to_container(_dataset("synthetic").schema)
    edit(node)
    with pytest.raises(ValueError, match=needle):
        DatasetSchema.from_schema_node(node)


def test_settings_resolve_interpolations_and_paths():
    s = DatasetSettings.from_config(_dataset("synthetic", seed=7, data="/d"))
    assert s.split.seed == 7 and s.split.val_fraction == 0.1
    assert s.train_path("NL") == Path("/d/synthetic/seed2024-train20000-test10000/NL/train.csv")
    a = DatasetSettings.from_config(_dataset("aliexpress"))
    assert a.test_path("FR") == Path("/data/AliExpress/AliExpress_FR/test.csv")
    t = DatasetSettings.from_config(_dataset("tenrec"))
    assert t.scenario_path("QB-video") == Path("/data/tenrec/QB-video.csv")
    assert (t.split.test_fraction, t.split.test_seed) == (0.2, 2024)
    assert "watching_times" in t.schema.ignore_columns


@pytest.mark.parametrize(
    "name, edit, needle",
    [
        ("synthetic", lambda d: d.update(val_fracton=0.1), "val_fracton"),
        ("synthetic", lambda d: d["split"].update(test_fraction=0.2), "test_fraction"),
        ("synthetic", lambda d: d.update(layout="parquet"), "layout"),
        ("synthetic", lambda d: d.update(numeric_transform="minmax"), "numeric_transform"),
        ("synthetic", lambda d: d["vocab"].update(min_count=0), "min_count"),
        ("synthetic", lambda d: d["split"].update(val_fraction=1.0), "val_fraction"),
        ("tenrec", lambda d: d.update(train_file="x.csv"), "train_file"),
        ("tenrec", lambda d: d["split"].pop("test_seed"), "test_seed"),
    ],
)
def test_bad_dataset_keys_are_rejected(name, edit, needle):
    node = OmegaConf.to_container(_dataset(name), resolve=True)
    edit(node)
    with pytest.raises(ValueError, match=needle):
        DatasetSettings.from_config(node)


def test_synthetic_yaml_generator_matches_code_defaults():
    """The yaml is the documented source of knobs; the dataclass defaults must not drift."""
    node = OmegaConf.to_container(_dataset("synthetic").generator)
    assert set(node) == {f.name for f in fields(GeneratorParams)}
    assert GeneratorParams.from_dict(copy.deepcopy(node)) == GeneratorParams()
