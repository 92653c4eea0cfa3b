"""The client's local update on a tiny MMoE, against independent oracles.

The oracle for every gradient is autograd on the loss written out in full
(BCE + mu/2 ||theta - received||^2) on a copy of the model: the trainer adds the
proximal gradient by hand, so a second, plain implementation checks it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score
from torch.nn import functional as F

from pfms_client.data.tensors import TensorSplit
from pfms_client.mmoe import build_model
from pfms_client.template import Group, classify
from pfms_client.trainer import TrainConfig, evaluate, predict, train_local

MODEL = {"embed_dim": 4, "template": {"global": 1, "scenario": 1, "task": 1}, "expert_hidden": [8],
         "tower_hidden": [4], "dropout": 0.0, "bn_momentum": 0.1, "output_bias": "zero"}
FIELDS = [5, 3]
NUM = 3
ADAM = torch.optim.Adam  # the real one, before a test swaps in RecordingAdam


def tiny_model(seed: int = 0):
    return build_model(MODEL, FIELDS, NUM, 2, seed)


def tiny_data(n: int = 40, seed: int = 1) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    x_cat = torch.stack([torch.randint(0, d, (n,), generator=g) for d in FIELDS], dim=1)
    x_num = torch.randn(n, NUM, generator=g)
    y = (torch.rand(n, 2, generator=g) < torch.tensor([0.4, 0.2])).float()
    y[:2] = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # both classes in both tasks
    return TensorSplit(x_cat, x_num, y)


def cfg(**kw) -> TrainConfig:
    base = {"local_epochs": 1, "batch_size": 1000, "lr": 1e-3, "weight_decay": 0.0, "mu": 0.0}
    return TrainConfig(**{**base, **kw})


def anchor_for(model, scale: float = 0.3, seed: int = 2) -> dict[str, torch.Tensor]:
    """'Received' tensors: the uploaded groups (G and towers here), moved off the model."""
    g = torch.Generator().manual_seed(seed)
    return {n: p.detach() + scale * torch.randn(p.shape, generator=g)
            for n, p in model.named_parameters() if classify(n).group in (Group.GLOBAL, Group.TOWER)}


class RecordingAdam(torch.optim.Adam):
    """Adam that keeps the gradient of every parameter at every step (before the update)."""

    steps: list[dict[int, torch.Tensor]] = []

    def step(self, closure=None):
        RecordingAdam.steps.append({id(p): p.grad.detach().clone()
                                    for group in self.param_groups for p in group["params"] if p.grad is not None})
        return super().step(closure)


@pytest.fixture
def recording(monkeypatch):
    RecordingAdam.steps = []
    monkeypatch.setattr(torch.optim, "Adam", RecordingAdam)
    return RecordingAdam


def oracle_grads(model, data: TensorSplit, anchor: dict[str, torch.Tensor], mu: float) -> dict[str, torch.Tensor]:
    """d/dtheta [BCE(all rows) + mu/2 sum ||theta - anchor||^2] by autograd, on a copy."""
    m = copy.deepcopy(model).train()
    loss = F.binary_cross_entropy_with_logits(m(data.x_cat, data.x_num), data.y)
    params = dict(m.named_parameters())
    loss = loss + 0.5 * mu * sum(((params[n] - a) ** 2).sum() for n, a in anchor.items())
    loss.backward()
    return {n: p.grad.clone() for n, p in params.items()}


@pytest.mark.parametrize("mu", [0.0, 0.7])
def test_gradient_is_bce_plus_mu_times_distance_to_received(recording, mu):
    model, data = tiny_model(), tiny_data()
    anchor = anchor_for(model)
    want = oracle_grads(model, data, anchor, mu)
    no_prox = oracle_grads(model, data, anchor, 0.0)
    ids = {id(p): n for n, p in model.named_parameters()}
    train_local(model, data, anchor, cfg(mu=mu), seed=0)  # one batch holds every row
    assert len(recording.steps) == 1
    got = {ids[i]: g for i, g in recording.steps[0].items()}
    assert set(got) == set(want)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6, msg=n)
    if mu > 0:  # the proximal part is really there, and only on the received tensors
        for n in anchor:
            assert not torch.allclose(got[n], no_prox[n], atol=1e-4), n
        for n in set(want) - set(anchor):
            torch.testing.assert_close(got[n], no_prox[n], rtol=1e-5, atol=1e-6, msg=n)


def test_proximal_gradient_on_a_later_step_uses_the_moved_parameters(recording):
    """Step 2's proximal part is mu (theta_after_step_1 - received), not of the start point."""
    model, data = tiny_model(), tiny_data()
    anchor = anchor_for(model)
    mu = 2.0
    train_local(model, data, anchor, cfg(mu=mu, local_epochs=2), seed=0)
    assert len(recording.steps) == 2
    # Replay step 1 with plain Adam on a copy to know theta after it.
    replay = tiny_model()
    params = dict(replay.named_parameters())
    opt = ADAM(params.values(), lr=1e-3, weight_decay=0.0)
    grads = oracle_grads(replay, data, anchor, mu)
    for n, p in params.items():
        p.grad = grads[n]
    opt.step()
    want = oracle_grads(replay, data, anchor, mu)
    ids = {id(p): n for n, p in model.named_parameters()}
    got = {ids[i]: g for i, g in recording.steps[1].items()}
    for n in anchor:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-6, msg=n)


def test_reported_bce_rows_and_proximal_value(recording):
    model, data = tiny_model(), tiny_data(n=41)
    anchor = anchor_for(model)
    start = copy.deepcopy(model).train()
    with torch.no_grad():
        bce0 = float(F.binary_cross_entropy_with_logits(start(data.x_cat, data.x_num), data.y))
    mu = 0.5
    stats = train_local(model, data, anchor, cfg(mu=mu, batch_size=41), seed=3)
    assert stats["rows"] == 41.0
    assert stats["train_bce"] == pytest.approx(bce0, rel=1e-5)  # the loss of the one batch, before its step
    params = {n: p.detach() for n, p in model.named_parameters()}
    prox = 0.5 * mu * sum(float(((params[n] - a) ** 2).sum()) for n, a in anchor.items())
    assert stats["prox"] == pytest.approx(prox, rel=1e-6)
    assert stats["seconds"] > 0 and stats["samples_per_s"] == pytest.approx(41.0 / stats["seconds"])


def test_batches_epochs_and_the_one_row_tail(recording):
    """41 rows in batches of 2, 3 epochs: 20 batches of 2 per epoch, the 1-row tail skipped (BatchNorm)."""
    model, data = tiny_model(), tiny_data(n=41)
    stats = train_local(model, data, {}, cfg(batch_size=2, local_epochs=3), seed=0)
    assert len(recording.steps) == 60
    assert stats["rows"] == 120.0


def test_train_bce_is_the_mean_of_the_batch_losses(recording):
    """Two epochs with a learning rate too small to move float32 weights: every batch
    loss is the loss of the start model on that batch, and train_bce their mean."""
    model, data = tiny_model(), tiny_data(n=40)
    start = copy.deepcopy(model).train()
    stats = train_local(model, data, {}, cfg(batch_size=10, local_epochs=2, lr=1e-30), seed=5)
    gen = torch.Generator().manual_seed(5)
    losses = []
    with torch.no_grad():
        for _ in range(2):
            perm = torch.randperm(40, generator=gen)
            for s in range(0, 40, 10):
                idx = perm[s:s + 10]
                losses.append(float(F.binary_cross_entropy_with_logits(start(data.x_cat[idx], data.x_num[idx]),
                                                                        data.y[idx])))
    assert len(recording.steps) == 8
    assert stats["train_bce"] == pytest.approx(float(np.mean(losses)), rel=1e-5)
    assert len(set(np.round(losses, 6))) > 1  # batches differ, so the mean is a real check


def test_same_seed_same_model_different_seed_different_model():
    data = tiny_data()
    runs = []
    for seed in (0, 0, 1):
        model = tiny_model()
        train_local(model, data, {}, cfg(batch_size=8, lr=1e-2), seed=seed)
        runs.append({n: t.clone() for n, t in model.state_dict().items()})
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert any(not torch.equal(runs[0][n], runs[2][n]) for n in runs[0])


def test_trainable_freezes_everything_else_and_restores_requires_grad():
    model, data = tiny_model(), tiny_data()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    head = [n for n in before if classify(n).group is Group.TOWER]
    next(model.gates.parameters()).requires_grad_(False)  # a caller's own freeze survives the call
    train_local(model, data, anchor_for(model), cfg(mu=0.5, lr=1e-2), seed=0, trainable=head)
    for n, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[n])
        assert moved == (n in head), n
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert flags.pop("gates.0.weight") is False
    assert all(flags.values())
    with pytest.raises(ValueError, match="not parameters"):
        train_local(model, data, {}, cfg(), seed=0, trainable=["towers.0.nope"])


def test_frozen_parameters_get_no_proximal_pull(recording):
    """A frozen tensor in the anchor is not stepped and not pulled (FedRep's head phase)."""
    model, data = tiny_model(), tiny_data()
    anchor = anchor_for(model)
    body = [n for n, _ in model.named_parameters() if classify(n).group is not Group.TOWER]
    ids = {id(p): n for n, p in model.named_parameters()}
    train_local(model, data, anchor, cfg(mu=0.5), seed=0, trainable=body)
    stepped = {ids[i] for i in recording.steps[0]}
    assert stepped == set(body)


def test_predict_is_the_eval_mode_sigmoid_in_any_batch_size():
    model, data = tiny_model(), tiny_data(n=37)
    train_local(model, data, {}, cfg(batch_size=8, lr=1e-2), seed=0)  # BN running stats move off their init
    model.eval()
    with torch.no_grad():
        want = torch.sigmoid(model(data.x_cat, data.x_num)).numpy()
    model.train()  # predict must switch to eval mode itself
    for bs in (1, 5, 37, 100):
        np.testing.assert_allclose(predict(model, data, bs), want, rtol=1e-5, atol=1e-6)
    empty = TensorSplit(data.x_cat[:0], data.x_num[:0], data.y[:0])
    assert predict(model, empty, 8).shape == (0, 2)


def test_evaluate_matches_sklearn():
    model, data = tiny_model(), tiny_data(n=60)
    p = predict(model, data, 16).astype(np.float64)
    got = evaluate(model, data, ["ctr", "ctcvr"], 16)
    for t, name in enumerate(["ctr", "ctcvr"]):
        y = data.y[:, t].numpy()
        assert got[name]["auc"] == pytest.approx(roc_auc_score(y, p[:, t]), abs=1e-7)
        assert got[name]["logloss"] == pytest.approx(log_loss(y, np.clip(p[:, t], 1e-7, 1 - 1e-7)), abs=1e-7)
        assert got[name]["n"] == 60 and got[name]["positives"] == y.sum()


@pytest.mark.parametrize("key,value", [("local_epochs", 0), ("batch_size", 1), ("lr", 0.0), ("mu", -0.1),
                                       ("local_steps", 0), ("local_steps", -3)])
def test_train_config_refuses_out_of_range_values(key, value):
    good = {"local_epochs": 1, "batch_size": 2, "lr": 1e-3, "weight_decay": 0.0, "mu": 0.0}
    assert TrainConfig.from_config(good) == TrainConfig(**good)
    with pytest.raises(ValueError, match="out of range"):
        TrainConfig.from_config({**good, key: value})


def test_train_config_converts_types():
    tc = TrainConfig.from_config({"local_epochs": "2", "batch_size": 64.0, "lr": "0.5", "weight_decay": 1, "mu": 0})
    assert (tc.local_epochs, tc.batch_size, tc.lr, tc.weight_decay, tc.mu) == (2, 64, 0.5, 1.0, 0.0)
    assert isinstance(tc.local_epochs, int) and isinstance(tc.lr, float) and isinstance(tc.weight_decay, float)
    assert replace(tc, mu=1.0).mu == 1.0 and not math.isnan(tc.lr)
    assert (tc.local_steps, tc.device) == (None, "cpu")  # neither key given: whole epochs on the CPU


@pytest.mark.parametrize("steps", [1, "7", 250.0])
def test_train_config_reads_local_steps_and_device(steps):
    base = {"local_epochs": 1, "batch_size": 2, "lr": 1e-3, "weight_decay": 0.0, "mu": 0.0}
    tc = TrainConfig.from_config({**base, "local_steps": steps, "device": "auto"})
    assert tc.local_steps == int(float(steps)) and isinstance(tc.local_steps, int) and tc.device == "auto"
    assert TrainConfig.from_config({**base, "local_steps": None}).local_steps is None
    with pytest.raises(ValueError, match="train.device='gpu'"):
        TrainConfig.from_config({**base, "device": "gpu"})


def test_gpu_share_is_one_over_the_clients_on_cuda_and_zero_on_the_cpu(monkeypatch):
    from pfms_client.trainer import client_gpu_share

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert client_gpu_share("cpu", 4) == 0.0 and client_gpu_share("auto", 4) == 0.0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert client_gpu_share("cpu", 4) == 0.0
    assert client_gpu_share("cuda", 4) == 0.25 and client_gpu_share("cuda:1", 3) == pytest.approx(1 / 3)
    assert client_gpu_share("auto", 2) == 0.5 and client_gpu_share("cuda", 0) == 1.0


class FakeClock:
    """time.perf_counter that moves by ``step`` seconds per call."""

    def __init__(self, step: float):
        self.now, self.step = 100.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.mark.parametrize("step,rate", [(2.0, 20.0), (0.0, 0.0)])  # 40 rows in 2 s; a clock that did not move
def test_seconds_and_samples_per_second_come_from_the_clock(monkeypatch, step, rate):
    import pfms_client.trainer as trainer

    monkeypatch.setattr(trainer.time, "perf_counter", FakeClock(step))
    stats = train_local(tiny_model(), tiny_data(), {}, cfg(batch_size=8), seed=0)
    assert stats["seconds"] == step and stats["samples_per_s"] == rate


def test_weight_decay_reaches_adam():
    """Adam's L2 term: the trained model equals a replay with torch's Adam(weight_decay) on the same batches."""
    data = tiny_data()
    model, replay = tiny_model(), tiny_model()
    train_local(model, data, {}, cfg(lr=1e-2, weight_decay=0.3, local_epochs=3), seed=0)  # one batch per epoch
    opt = ADAM(replay.parameters(), lr=1e-2, weight_decay=0.3)
    replay.train()
    for _ in range(3):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(replay(data.x_cat, data.x_num), data.y).backward()
        opt.step()
    for (n, p), q in zip(model.named_parameters(), replay.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    no_decay = tiny_model()
    train_local(no_decay, data, {}, cfg(lr=1e-2, weight_decay=0.0, local_epochs=3), seed=0)
    assert any(not torch.allclose(p, q, atol=1e-5) for p, q in zip(model.parameters(), no_decay.parameters()))


@pytest.mark.parametrize("name, ok", [("cpu", True), ("auto", True), ("cuda", True), ("cuda:0", True), ("cuda:12", True),
                                      ("gpu:0", False), ("tpu:1", False), ("cuda:", False), ("cuda:x", False),
                                      ("cuda:1:2", False), ("CUDA", False), (3, False)])
def test_device_names(name, ok):
    from pfms_client.trainer import device_problem

    assert (device_problem(name) is None) == ok
