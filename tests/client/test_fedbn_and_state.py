"""FedBN on the wire, and the client's local state across rounds and restarts."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from torch.nn.modules.batchnorm import _BatchNorm

from conftest import inprocess_overrides, run_inprocess
from pfms_client.client_app import Session, app as client_app, to_record
from pfms_client.config import load_config
from pfms_client.mmoe import build_model
from pfms_client.state import LocalStateError
from pfms_client.template import Group, classify, share_key, shared_parts, uploaded_names
from pfms_client.wire import unpack
from pfms_server.experiments.inprocess import InProcessGrid


class RecordingGrid(InProcessGrid):
    """Keeps the names of every tensor that crossed the wire, both directions."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.down, self.up = set(), set()

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        for m in messages:
            for rec in m.content.array_records.values():
                self.down.update(unpack(rec))
        replies = super().send_and_receive(messages, timeout=timeout)
        for r in replies:
            assert not r.has_error(), r.error.reason
            for rec in r.content.array_records.values():
                self.up.update(unpack(rec))
        return replies


def _bn(names):
    """BN tensors by the template's naming rule (a ``bn`` component)."""
    return {n for n in names if classify(n).is_bn}


BN_TENSORS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def bn_by_module_type(model: torch.nn.Module) -> set[str]:
    """Every tensor of every BatchNorm module, found by the module's type, not its name:
    a BatchNorm that someone names ``norm`` is still found here."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            names.update(f"{prefix}.{k}" for k in module.state_dict())
    assert names <= set(model.state_dict())
    return names


def _bn_of_run(grid) -> set[str]:
    """BN tensors, by module type, of every node's model in a finished in-process run."""
    return set().union(*(bn_by_module_type(Session(ctx).model) for ctx in grid.contexts.values()))


def test_no_bn_tensor_crosses_the_wire_under_fedbn(pfms_home, tmp_path):
    grid, _, _ = run_inprocess(inprocess_overrides(pfms_home, "num_rounds=2", "eval.splits=[val]"),
                               tmp_path / "fedbn", RecordingGrid)
    assert grid.down and grid.up
    assert not _bn(grid.down) and not _bn(grid.up)
    bn = _bn_of_run(grid)
    assert {n.rsplit(".", 1)[1] for n in bn} == BN_TENSORS
    assert not bn & grid.down, sorted(bn & grid.down)[:5]
    assert not bn & grid.up, sorted(bn & grid.up)[:5]
    groups = {classify(n).group for n in grid.up}
    assert groups == {Group.GLOBAL, Group.SCENARIO, Group.TOWER}


def test_bn_is_sent_when_fedbn_is_off(pfms_home, tmp_path):
    """The ablation: the same check fails when FedBN is switched off."""
    grid, strategy, _ = run_inprocess(
        inprocess_overrides(pfms_home, "num_rounds=1", "strategy.fedbn=false", "eval.splits=[val]"),
        tmp_path / "nofedbn", RecordingGrid)
    assert _bn(grid.up) and _bn(grid.down)
    # Every BN tensor of a shared part (G, S, towers) crosses, both ways; task experts' do not.
    share = shared_parts(load_config(["strategy.fedbn=false"]).strategy)
    bn = _bn_of_run(grid)
    shared_bn = {n for n in bn if share_key(n) in share}
    assert shared_bn and shared_bn != bn
    assert bn & grid.up == shared_bn and bn & grid.down == shared_bn


BN_STATS = {"running_mean", "running_var", "num_batches_tracked"}


class LastSentGrid(RecordingGrid):
    """Also keeps what each node received in the last message that carried arrays."""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        received = {m.metadata.dst_node_id: {n: a for rec in m.content.array_records.values()
                                             for n, a in unpack(rec).items()} for m in messages}
        if any(received.values()):
            self.received = received
        return super().send_and_receive(messages, timeout=timeout)


def test_fedbn_stats_shares_gamma_and_beta_and_keeps_the_statistics(pfms_home, tmp_path):
    """``strategy.fedbn=stats`` (SiloBN): the affine BN tensors of the shared parts cross both
    ways and come back averaged, the same for every node; no running statistic ever crosses,
    and each node keeps its own."""
    grid, _, _ = run_inprocess(
        inprocess_overrides(pfms_home, "num_rounds=2", "strategy.fedbn=stats", "eval.splits=[val]"),
        tmp_path / "silobn", LastSentGrid)
    share = shared_parts(load_config(["strategy.fedbn=stats"]).strategy)
    sessions = [Session(ctx) for ctx in grid.contexts.values()]
    bn = set().union(*(bn_by_module_type(session.model) for session in sessions))
    shared_bn = {n for n in bn if share_key(n) in share}
    affine = {n for n in shared_bn if n.rsplit(".", 1)[1] in {"weight", "bias"}}
    assert affine and affine != shared_bn
    assert bn & grid.up == affine and bn & grid.down == affine
    # After a round, G, S and the towers' gamma/beta come back as one average for everybody
    # (S experts' other tensors are personalised, so they differ by node).
    received = list(grid.received.values())
    assert len(received) == 4
    for n in affine:
        assert all(np.array_equal(r[n], received[0][n]) for r in received[1:]), n
    scenario_w = next(n for n in received[0] if n.startswith("experts.scenario.") and "linear.weight" in n)
    assert not np.array_equal(received[0][scenario_w], received[1][scenario_w])
    # Each node's running statistics are its own (trained on its rows, never overwritten).
    for session in sessions:
        session.restore()
    trained = [session.model.state_dict() for session in sessions]
    means = sorted(n for n in shared_bn if n.endswith("running_mean"))
    assert means
    for n in means:
        assert not torch.equal(trained[0][n], trained[1][n]), n
        assert float(trained[0][n].abs().sum()) > 0, n


def test_fedbn_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match=r"strategy.fedbn='silo': expected true, false or stats"):
        uploaded_names(["experts.global.0.mlp.layers.0.bn.weight"], fedbn="silo", share=["global"])


@pytest.mark.parametrize("strategy", ["pfmsmtrec", "fedavg", "fedper"])
def test_fedbn_keeps_back_exactly_the_batchnorm_tensors(strategy):
    """The template under FedBN uploads what it uploads without FedBN, minus exactly the
    tensors of BatchNorm modules (by type): nothing else is kept back, no BN slips through."""
    cfg = load_config([f"strategy={strategy}"])
    model = build_model(cfg.model, field_dims=[7] * 16, num_numerical=63, num_tasks=2, seed=0)
    names = list(model.state_dict())
    bn = bn_by_module_type(model)
    assert {n.rsplit(".", 1)[1] for n in bn} == BN_TENSORS
    share = shared_parts(cfg.strategy)
    with_bn = uploaded_names(names, fedbn=False, share=share)
    without_bn = uploaded_names(names, fedbn=True, share=share)
    assert set(with_bn) & bn  # there is something for FedBN to keep back
    assert without_bn == [n for n in with_bn if n not in bn]
    stats_local = uploaded_names(names, fedbn="stats", share=share)
    assert stats_local == [n for n in with_bn if n not in bn or n.rsplit(".", 1)[1] not in BN_STATS]
    assert set(stats_local) - set(without_bn) and set(with_bn) - set(stats_local)


def _context(overrides, node_id=7, state_dir=None):
    nc = {"partition-id": 1, "num-partitions": 4}
    if state_dir:
        nc["state-dir"] = str(state_dir)
    return Context(run_id=5, node_id=node_id, node_config=nc, state=RecordDict(),
                   run_config={"overrides": " ".join(overrides)})


def _train(context, arrays, server_round):
    msg = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})}),
                  message_type=MessageType.TRAIN, dst_node_id=context.node_id)
    reply = client_app(msg, context)
    assert not reply.has_error(), reply.error.reason
    return reply


def _task_experts(model):
    return {n: t.clone() for n, t in model.state_dict().items() if classify(n).group is Group.TASK}


def test_local_state_survives_rounds_and_node_restarts(pfms_home, tmp_path, task_identity):
    overrides = inprocess_overrides(pfms_home)
    ctx = _context(overrides, state_dir=tmp_path / "state")
    fresh = Session(ctx)
    init = _task_experts(fresh.model)
    sent = to_record(fresh.uploadable())

    reply1 = _train(ctx, sent, 1)
    after1 = Session(ctx)
    after1.restore()
    t1 = _task_experts(after1.model)
    assert any(not torch.equal(t1[n], init[n]) for n in init)  # trained, kept
    assert after1.local.rounds_trained == 1

    _train(ctx, reply1.content["arrays"], 2)
    after2 = Session(ctx)
    after2.restore()
    assert after2.local.rounds_trained == 2
    t2 = _task_experts(after2.model)
    # round 2 continued from round 1: it moved from t1, and is not a fresh start
    assert any(not torch.equal(t2[n], t1[n]) for n in t1)

    # A restarted node (new Flower node id, empty context.state) reloads its scenario's state from disk.
    restarted = _context(overrides, node_id=99, state_dir=tmp_path / "state")
    s = Session(restarted)
    s.restore()
    assert s.local.rounds_trained == 2
    for n, t in _task_experts(s.model).items():
        assert torch.equal(t, t2[n])


def _arrays(reply):
    return unpack(reply.content["arrays"])


def test_a_resent_round_trains_from_the_state_before_it(pfms_home, tmp_path, task_identity):
    """A server that died after clients trained round 3, but before it aggregated
    round 3, resumes by sending round 3 again: the client must train it from its
    round-2 state (same reply as the first time), also after its own restart."""
    overrides = inprocess_overrides(pfms_home)
    ctx = _context(overrides, state_dir=tmp_path / "state")
    sent = to_record(Session(ctx).uploadable())
    for server_round in (1, 2):
        _train(ctx, sent, server_round)
    first = _arrays(_train(ctx, sent, 3))

    again = _arrays(_train(ctx, sent, 3))  # same node, same run
    restarted = _context(overrides, node_id=99, state_dir=tmp_path / "state")
    from_disk = _arrays(_train(restarted, sent, 3))  # a new process reading the disk state
    for name in first:
        torch.testing.assert_close(torch.from_numpy(again[name]), torch.from_numpy(first[name]), rtol=0, atol=0)
        torch.testing.assert_close(torch.from_numpy(from_disk[name]), torch.from_numpy(first[name]), rtol=0, atol=0)
    s = Session(restarted)
    s.restore()
    assert s.local.rounds_trained == 3  # round 3 counted once, not three times

    with pytest.raises(LocalStateError, match="round 2"):  # only one round back is kept
        _train(restarted, sent, 2)


def test_wrong_tensor_from_server_is_refused(pfms_home, task_identity):
    ctx = _context(inprocess_overrides(pfms_home))
    s = Session(ctx)
    tensors = s.uploadable()
    name = sorted(tensors)[0]
    tensors[name] = tensors[name][..., :1]
    msg = Message(RecordDict({"arrays": to_record(tensors), "config": ConfigRecord({"server-round": 1})}),
                  message_type=MessageType.TRAIN, dst_node_id=7)
    try:
        client_app(msg, ctx)
    except ValueError as exc:
        assert name in str(exc) and "shape" in str(exc)
    else:
        raise AssertionError("a wrong shape was accepted")
    assert s.local.load() is None  # nothing stored
