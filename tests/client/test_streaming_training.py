"""Training and evaluation from the mapped store equal the in-memory path; local_steps
bounds a round's batches; train.device: cpu, auto (on a CPU-only machine), bad values."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import CONF_DATASET as CONF, FIXTURES
from pfms_client.config import ConfigError, load_config
from pfms_client.data import open_scenario
from pfms_client.data.batches import batch_indices
from pfms_client.mmoe import build_model
from pfms_client.trainer import TrainConfig, evaluate, resolve_device, train_local
from omegaconf import OmegaConf


def fixture_cfg(store) -> dict:
    node = OmegaConf.create({"seed": 0, "paths": {"data": "/unused"}})
    node.dataset = OmegaConf.load(CONF / "aliexpress.yaml")
    cfg = OmegaConf.to_container(node, resolve=True)["dataset"]
    cfg.update(root=str(FIXTURES / "aliexpress_sample"), scenarios=["US"], scenario_dir=".",
               train_file="rechub_{scenario}_train.csv", test_file="rechub_{scenario}_test.csv",
               store_dir=str(store))
    return cfg


def model_for(data, seed: int = 3):
    model_cfg = {"embed_dim": 4, "template": {"global": 1, "scenario": 1, "task": 1}, "expert_hidden": [8],
                 "tower_hidden": [4], "dropout": 0.0, "bn_momentum": 0.1, "output_bias": "prior"}
    return build_model(model_cfg, data.field_dims, data.num_numerical, data.num_tasks, seed,
                       positive_rates=data.positive_rates)


def tcfg(**kw) -> TrainConfig:
    base = TrainConfig(local_epochs=2, batch_size=16, lr=1e-2, weight_decay=0.0, mu=0.1)
    return replace(base, **kw)


def test_streamed_training_and_evaluation_equal_the_in_memory_ones(tmp_path):
    mapped = open_scenario(fixture_cfg(tmp_path), "US")
    memory = mapped.in_memory()
    results = []
    for data in (mapped, memory):
        model = model_for(data)
        anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
        stats = train_local(model, data.train, anchor, tcfg(), seed=11)
        metrics = evaluate(model, data.test, data.task_names, batch_size=7)
        results.append((stats["train_bce"], stats["rows"], metrics, model.state_dict()))
    (bce_a, rows_a, m_a, sd_a), (bce_b, rows_b, m_b, sd_b) = results
    assert bce_a == bce_b and rows_a == rows_b == 2 * len(memory.train)
    assert m_a == m_b
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_local_steps_bounds_the_batches_of_a_round(tmp_path):
    data = open_scenario(fixture_cfg(tmp_path), "US")  # 90 train rows
    n = len(data.train)
    # 9 batches > one epoch of 90 rows (5 x 16 + 10): a second permutation gives 3 more of 16
    for steps, rows in ((1, 16), (3, 48), (9, 90 + 48)):
        model = model_for(data)
        stats = train_local(model, data.train, {}, tcfg(local_steps=steps, local_epochs=1), seed=5)
        assert stats["rows"] == rows
    plan = list(batch_indices(n, 16, torch.Generator().manual_seed(5), steps=9))
    assert len(plan) == 9 and all(len(i) >= 2 for i in plan)
    first_epoch = torch.cat(plan[:6])  # 90 rows = 5 batches of 16 + 10
    assert sorted(first_epoch.tolist()) == list(range(n))
    whole = list(batch_indices(n, 16, torch.Generator().manual_seed(5), epochs=1))
    assert all(torch.equal(a, b) for a, b in zip(whole, plan[:6], strict=True))


def test_device_cpu_and_auto_on_a_cpu_only_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda:0")
    data = open_scenario(fixture_cfg(tmp_path), "US").in_memory()
    states = []
    for device in ("cpu", "auto"):
        model = model_for(data)
        train_local(model, data.train, {}, tcfg(device=device), seed=2)
        assert all(p.device.type == "cpu" for p in model.parameters())
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "cuda0", "CPU", "gpu:0", "tpu:1", "cuda:1:2"])
def test_a_bad_device_fails_up_front_with_one_line(value):
    with pytest.raises(ConfigError) as info:
        load_config([f"train.device={value}"])
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"train.device='{value}'") and "cuda:<index>" in text


@pytest.mark.parametrize("override, words", [("train.local_steps=0", "train.local_steps=0: expected an integer >= 1"),
                                             ("train.local_steps=abc", "train.local_steps='abc'"),
                                             ("train.in_memory_max_rows=-1", "train.in_memory_max_rows=-1")])
def test_bad_local_steps_and_in_memory_rows_fail_up_front(override, words):
    with pytest.raises(ConfigError, match=words):
        load_config([override])


def test_good_values_pass():
    cfg = load_config(["train.local_steps=100", "train.device=cuda:1", "train.in_memory_max_rows=0"])
    assert cfg.train.local_steps == 100 and cfg.train.device == "cuda:1"
    assert load_config(["train.device=auto"]).train.device == "auto"
