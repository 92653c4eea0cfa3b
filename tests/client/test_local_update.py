"""The baselines' local updates (FedRep, Ditto) by what defines them, on a tiny MMoE."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pfms_client.local_update import MODES, client_mode, ditto_personal_update, fedrep_update, train_config
from pfms_client.template import Group, classify
from pfms_client.trainer import train_local
from test_trainer import FakeClock, RecordingAdam, anchor_for, cfg, oracle_grads, recording, tiny_data, tiny_model  # noqa: F401


def params_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_fedrep_fits_the_head_with_the_body_frozen_then_the_body_with_the_head_frozen():
    data = tiny_data()
    model = tiny_model()
    anchor = anchor_for(model)
    start = params_of(model)
    tcfg = cfg(mu=0.5, lr=1e-2, batch_size=8)
    stats = fedrep_update(model, data, anchor, tcfg, seed=4, head_epochs=2)
    after = params_of(model)

    # Oracle: the head phase alone (towers only, 2 epochs, no proximal term) on a copy.
    head_only = tiny_model()
    head = [n for n in start if classify(n).group is Group.TOWER]
    train_local(head_only, data, {}, replace(tcfg, local_epochs=2, mu=0.0), 4, trainable=head)
    head_after = params_of(head_only)
    for n in start:
        if n in head:  # the body phase never touched the head: it is exactly the head phase's result
            assert torch.equal(after[n], head_after[n]), n
            assert not torch.equal(after[n], start[n]), n
        else:  # the head phase never touched the body; the body phase moved it
            assert torch.equal(head_after[n], start[n]), n
            assert not torch.equal(after[n], start[n]), n
    # Rows: 2 head epochs + 1 body epoch of 40 rows.
    assert stats["rows"] == 120.0
    assert stats["samples_per_s"] == pytest.approx(120.0 / stats["seconds"])
    assert "head_bce" in stats and stats["head_bce"] != stats["train_bce"]


def test_fedrep_body_phase_is_pulled_towards_the_received_body(recording):
    model, data = tiny_model(), tiny_data()
    anchor = anchor_for(model)
    mu = 0.8
    fedrep_update(model, data, anchor, cfg(mu=mu), seed=0, head_epochs=1)
    assert len(recording.steps) == 2  # one head step, one body step (one batch each)
    # The body step's gradients are BCE + mu (theta - received) at the model the head phase left.
    ids = {id(p): n for n, p in model.named_parameters()}
    body_step = {ids[i]: g for i, g in recording.steps[1].items()}
    assert all(classify(n).group is not Group.TOWER for n in body_step)
    replay = tiny_model()
    head = [n for n, _ in replay.named_parameters() if classify(n).group is Group.TOWER]
    train_local(replay, data, {}, cfg(mu=0.0), 0, trainable=head)
    want = oracle_grads(replay, data, anchor, mu)
    for n, g in body_step.items():
        torch.testing.assert_close(g, want[n], rtol=1e-5, atol=1e-6, msg=n)
    head_step = {ids[i] for i in recording.steps[0]}
    assert head_step == set(head)


def test_ditto_personal_step_is_pulled_towards_the_global_model_with_lam(recording):
    personal, data = tiny_model(seed=3), tiny_data()
    received = anchor_for(tiny_model(seed=0), scale=0.0)  # the global model's uploaded tensors
    lam = 0.35
    want = oracle_grads(personal, data, received, lam)
    ids = {id(p): n for n, p in personal.named_parameters()}
    ditto_personal_update(personal, data, received, cfg(mu=0.01), seed=0, lam=lam)  # train.mu is not Ditto's lam
    got = {ids[i]: g for i, g in recording.steps[0].items()}
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6, msg=n)


def test_ditto_personal_model_uses_its_own_shuffle():
    """The personal step shuffles with another seed than the global model's update."""
    data = tiny_data()
    a, b = tiny_model(), tiny_model()
    tc = cfg(batch_size=8, lr=1e-2)
    train_local(a, data, {}, tc, 7)
    ditto_personal_update(b, data, {}, tc, seed=7, lam=0.0)
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_client_mode_and_train_config():
    assert MODES == ("plain", "fedrep", "ditto")
    for mode in MODES:
        assert client_mode({"client": {"mode": mode}}) == mode
    with pytest.raises(ValueError, match="strategy.client.mode"):
        client_mode({"client": {"mode": "fedsgd"}})
    train = {"local_epochs": 2, "batch_size": 16, "lr": 0.1, "weight_decay": 0.0, "mu": 0.01}
    assert train_config({"train": train, "strategy": {"mu": None}}).mu == 0.01
    got = train_config({"train": train, "strategy": {"mu": 0.003}})
    assert got.mu == 0.003 and got.local_epochs == 2 and got.lr == 0.1
    assert train_config({"train": train, "strategy": {"mu": 0}}).mu == 0.0
    assert train_config({"train": train, "strategy": {}}).mu == 0.01


def test_fedrep_head_phase_uses_head_epochs_not_local_epochs(recording):
    model, data = tiny_model(), tiny_data()
    fedrep_update(model, data, {}, cfg(local_epochs=2), seed=0, head_epochs=3)
    assert len(recording.steps) == 5  # 3 head epochs + 2 body epochs, one batch each


@pytest.mark.parametrize("step", [1.5, 0.0])
def test_fedrep_seconds_add_up_both_phases(monkeypatch, step):
    import pfms_client.trainer as trainer

    monkeypatch.setattr(trainer.time, "perf_counter", FakeClock(step))
    stats = fedrep_update(tiny_model(), tiny_data(), {}, cfg(batch_size=8), seed=0, head_epochs=1)
    assert stats["seconds"] == 2 * step  # each phase reads the clock twice: step seconds each
    assert stats["rows"] == 80.0
    assert stats["samples_per_s"] == (80.0 / (2 * step) if step else 0.0)
