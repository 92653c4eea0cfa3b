"""Tensors: splits, OOV re-indexing fitted on the train part only, T from the schema."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DATASET as CONF, FIXTURES
from pfms_client.data import ScenarioData, load_scenario
from pfms_client.data.settings import DatasetSettings
from pfms_client.data.tensors import build_scenario_data, validation_indices


def _yaml_cfg(name: str, **updates) -> dict:
    node = OmegaConf.create({"seed": 11, "paths": {"data": "/unused"}})
    node.dataset = OmegaConf.load(CONF / f"{name}.yaml")
    cfg = OmegaConf.to_container(node, resolve=True)["dataset"]
    cfg.update(updates)
    return cfg


def ali_fixture_cfg(**updates) -> dict:
    return _yaml_cfg(
        "aliexpress",
        root=str(FIXTURES / "aliexpress_sample"),
        scenarios=["US"],
        scenario_dir=".",
        train_file="rechub_{scenario}_train.csv",
        test_file="rechub_{scenario}_test.csv",
        **updates,
    )


def tiny_settings(
    tasks: list[dict],
    min_count: int = 1,
    val_fraction: float = 0.0,
    transform: str = "none",
    seed: int = 0,
) -> DatasetSettings:
    return DatasetSettings.from_config(
        {
            "name": "tiny",
            "layout": "aliexpress",
            "root": "/unused",
            "scenarios": ["A"],
            "scenario_dir": "{scenario}",
            "train_file": "train.csv",
            "test_file": "test.csv",
            "schema": {
                "id_columns": ["row"],
                "categorical": ["u", "g"],
                "numerical": ["n1", "n2"],
                "labels": ["click", "like", "buy"],
                "tasks": tasks,
            },
            "split": {"val_fraction": val_fraction, "seed": seed},
            "vocab": {"min_count": min_count},
            "numeric_transform": transform,
        }
    )


def tiny_frame(u: list[int], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(u)
    click = rng.integers(0, 2, n)
    return pd.DataFrame(
        {
            "row": np.arange(n),
            "u": u,
            "g": rng.integers(0, 3, n),
            "n1": np.arange(n, dtype=float),  # identifies the row after tensorising
            "n2": rng.normal(5.0, 2.0, n),
            "click": click,
            "like": click * rng.integers(0, 2, n),
            "buy": click * rng.integers(0, 2, n),
        }
    )


TWO_TASKS = [{"name": "ctr", "all_of": ["click"]}, {"name": "ctcvr", "all_of": ["click", "buy"]}]


def test_fixture_scenario_shapes_and_dtypes():
    data = load_scenario(ali_fixture_cfg(), "US")
    assert isinstance(data, ScenarioData)
    assert (len(data.train), len(data.val), len(data.test)) == (90, 10, 20)
    assert data.task_names == ["ctr", "ctcvr"] and data.num_tasks == 2
    assert data.num_numerical == 63 and len(data.field_dims) == 16
    assert data.field_dims[0] == 2  # constant site id + OOV slot
    for split in (data.train, data.val, data.test):
        assert split.x_cat.dtype == torch.int64 and split.x_num.dtype == torch.float32
        assert split.y.dtype == torch.float32 and split.y.shape[1] == 2
        assert (
            split.x_cat.is_contiguous() and split.x_num.is_contiguous() and split.y.is_contiguous()
        )
        assert split.x_cat.shape[1] == 16 and split.x_num.shape[1] == 63
        for f, dim in enumerate(data.field_dims):
            assert 0 <= int(split.x_cat[:, f].min()) and int(split.x_cat[:, f].max()) < dim
    assert data.train.x_cat.min() >= 1  # every train id is in its own vocabulary
    assert float(data.train.y[:, 0].sum() + data.val.y[:, 0].sum()) == 60.0
    assert float(data.test.y[:, 1].sum()) == 2.0
    assert torch.all(data.train.y[:, 1] <= data.train.y[:, 0])
    rates = data.positive_rates
    assert rates[0] == pytest.approx(float(data.train.y[:, 0].mean())) and 0 < rates[1] < rates[0]


def test_unseen_and_rare_ids_map_to_oov():
    settings = tiny_settings(TWO_TASKS, min_count=2)
    train = tiny_frame([1, 1, 2, 3, 3, 3, 7, 7])
    test = tiny_frame([2, 9, 3, 1, 7, 42])
    data = build_scenario_data("A", train, test, settings)
    assert data.field_dims[0] == 4  # ids {1, 3, 7} + OOV; id 2 seen once only
    assert data.train.x_cat[:, 0].tolist() == [1, 1, 0, 2, 2, 2, 3, 3]
    assert data.test.x_cat[:, 0].tolist() == [0, 0, 2, 1, 3, 0]


def test_vocab_and_scaler_are_fitted_on_the_train_part_only():
    n = 200
    settings = tiny_settings(TWO_TASKS, val_fraction=0.25, transform="standardize", seed=5)
    train = tiny_frame(list(range(n)))  # every id is unique: val ids never seen in fit part
    data = build_scenario_data("A", train, tiny_frame([0, 1, 2]), settings)
    assert len(data.val) == 50 and len(data.train) == 150
    assert data.field_dims[0] == 151
    assert data.val.x_cat[:, 0].eq(0).all()
    x = data.train.x_num.double()
    assert torch.allclose(x.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-4)


def test_val_split_is_seeded_and_partitions_the_train_file():
    train_idx, val_idx = validation_indices(1000, 0.1, seed=3)
    assert len(val_idx) == 100 and len(train_idx) == 900
    assert np.array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(1000))
    again = validation_indices(1000, 0.1, seed=3)
    assert np.array_equal(again[1], val_idx)
    assert not np.array_equal(validation_indices(1000, 0.1, seed=4)[1], val_idx)

    settings = tiny_settings(TWO_TASKS, val_fraction=0.3, seed=3)
    frame = tiny_frame([1] * 40)
    a = build_scenario_data("A", frame, frame, settings)
    b = build_scenario_data("A", frame, frame, settings)
    rows = sorted(a.train.x_num[:, 0].tolist() + a.val.x_num[:, 0].tolist())
    assert rows == list(map(float, range(40))) and len(a.val) == 12
    assert torch.equal(a.val.x_num, b.val.x_num)


@pytest.mark.parametrize(
    "tasks",
    [
        [{"name": "click", "all_of": ["click"]}],
        [
            {"name": "ctr", "all_of": ["click"]},
            {"name": "like", "all_of": ["click", "like"]},
            {"name": "ctcvr", "all_of": ["click", "buy"]},
        ],
    ],
)
def test_number_of_tasks_comes_from_the_schema(tasks):
    frame = tiny_frame([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], seed=2)
    data = build_scenario_data("A", frame, frame, tiny_settings(tasks))
    assert data.train.y.shape == (10, len(tasks)) and data.num_tasks == len(tasks)
    assert data.task_names == [t["name"] for t in tasks]
    for t, task in enumerate(tasks):
        expected = np.logical_and.reduce([frame[c].to_numpy() == 1 for c in task["all_of"]])
        assert data.test.y[:, t].numpy().tolist() == expected.astype(np.float32).tolist()


def test_numeric_transform_none_keeps_raw_values():
    frame = tiny_frame([1, 2, 3])
    data = build_scenario_data("A", frame, frame, tiny_settings(TWO_TASKS))
    assert np.allclose(data.test.x_num.numpy(), frame[["n1", "n2"]].to_numpy(), atol=1e-5)


def test_tenrec_fixture_end_to_end_has_no_numericals():
    cfg = _yaml_cfg("tenrec", root=str(FIXTURES / "tenrec"), scenarios=["QK-video", "QB-video"])
    data = load_scenario(cfg, "QB-video")
    assert data.task_names == ["click", "like"]
    assert data.num_numerical == 0 and data.train.x_num.shape == (len(data.train), 0)
    assert len(data.train) + len(data.val) == 48 and len(data.test) == 12
    assert data.categorical_names == ["user_id", "item_id", "video_category", "gender", "age"]


def test_select_slices_all_tensors_together():
    data = load_scenario(ali_fixture_cfg(), "US")
    batch = data.train.select(torch.tensor([3, 0]))
    assert torch.equal(batch.x_num[1], data.train.x_num[0]) and len(batch) == 2
    assert torch.equal(data.train.select(slice(0, 5)).y, data.train.y[:5])
