"""The parameter template: names say the group; gate t only reaches G + S + T_t."""

import pytest
import torch

from pfms_client.mmoe import build_model
from pfms_client.template import ExpertTemplate, Group, classify, is_uploaded, shared_parts, uploaded_names

PF = ("global", "scenario", "tower")

MODEL = {"embed_dim": 4, "template": {"global": 2, "scenario": 2, "task": 2},
         "expert_hidden": [16, 8], "tower_hidden": [8], "dropout": 0.0, "bn_momentum": 0.1}


def make(num_tasks=2, template=None, field_dims=(5, 7, 3), num_numerical=4, seed=0):
    cfg = dict(MODEL, template=template or MODEL["template"])
    return build_model(cfg, list(field_dims), num_numerical, num_tasks, seed)


def batch(n=32, field_dims=(5, 7, 3), num_numerical=4, num_tasks=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x_cat = torch.stack([torch.randint(0, d, (n,), generator=g) for d in field_dims], 1)
    return x_cat, torch.rand(n, num_numerical, generator=g), (torch.rand(n, num_tasks, generator=g) < 0.3).float()


def test_every_name_is_classified_and_groups_are_complete():
    model = make()
    groups = {}
    for name in model.state_dict():
        groups.setdefault(classify(name).group, []).append(name)
    assert set(groups) == set(Group) - {Group.SHARED_EMBEDDING}  # only with strategy.shared_embeddings on
    assert {classify(n).unit for n in groups[Group.GLOBAL]} == {"experts.global.0", "experts.global.1"}
    assert {classify(n).unit for n in groups[Group.TASK]} == {f"experts.task.{t}.{i}" for t in (0, 1) for i in (0, 1)}
    assert any(classify(n).is_bn for n in groups[Group.SCENARIO])


def test_unknown_name_is_an_error():
    with pytest.raises(ValueError, match="does not follow the parameter template"):
        classify("decoder.weight")


def test_uploaded_names_exclude_bn_task_experts_gates_embeddings():
    names = list(make().state_dict())
    up = uploaded_names(names, fedbn=True, share=PF)
    assert up and all(classify(n).group in (Group.GLOBAL, Group.SCENARIO, Group.TOWER) for n in up)
    assert not any(classify(n).is_bn for n in up)
    assert not any(n.startswith(("gates", "embedding", "numeric", "experts.task")) for n in up)
    local = uploaded_names(names, fedbn=True, share=shared_parts({"share": list(PF), "towers": {"mode": "local"}}))
    assert not any(n.startswith("towers") for n in local)
    no_fedbn = uploaded_names(names, fedbn=False, share=PF)
    assert any(classify(n).is_bn for n in no_fedbn)


@pytest.mark.parametrize("task", [0, 1, 2])
def test_loss_of_task_t_gives_zero_gradient_to_other_task_experts(task):
    model = make(num_tasks=3)
    x_cat, x_num, y = batch(num_tasks=3)
    logits = model(x_cat, x_num)
    torch.nn.functional.binary_cross_entropy_with_logits(logits[:, task], y[:, task]).backward()
    for name, p in model.named_parameters():
        role = classify(name)
        grad = 0.0 if p.grad is None else float(p.grad.abs().sum())
        if role.group is Group.TASK and role.task != task:
            assert grad == 0.0, name
        if role.group is Group.TOWER and role.task != task:
            assert grad == 0.0, name
        if role.group is Group.TASK and role.task == task and name.endswith("linear.weight"):
            assert grad > 0.0, name
        if role.group in (Group.GLOBAL, Group.SCENARIO) and name.endswith("linear.weight"):
            assert grad > 0.0, name


def test_gate_width_is_g_plus_s_plus_own_task_experts():
    model = make(template={"global": 1, "scenario": 3, "task": 2})
    assert all(g.out_features == 6 for g in model.gates)
    assert ExpertTemplate(1, 3, 2, 2).gate_width == 6


def test_no_template_ablation_shares_all_experts():
    model = make(template={"global": 0, "scenario": 8, "task": 0})
    names = list(model.state_dict())
    assert not any(classify(n).group in (Group.GLOBAL, Group.TASK) for n in names)
    assert all(g.out_features == 8 for g in model.gates)


def test_shared_init_does_not_depend_on_vocabulary():
    a, b = make(field_dims=(5, 7, 3)), make(field_dims=(50, 2, 300))
    up = uploaded_names(a.state_dict(), fedbn=True, share=PF)
    for n in up:
        assert torch.equal(a.state_dict()[n], b.state_dict()[n]), n


def test_unknown_model_key_is_rejected():
    with pytest.raises(ValueError, match="unknown keys"):
        build_model(dict(MODEL, experts=3), [3], 2, 2, 0)


def test_fedavg_family_share_everything_but_embeddings_and_unknown_parts_are_refused():
    names = list(make().state_dict())
    everything = uploaded_names(names, fedbn=False, share=("global", "scenario", "task", "tower", "gates", "numeric"))
    assert {n for n in names if not n.startswith("embedding")} == set(everything)
    fedper = uploaded_names(names, fedbn=False, share=("global", "scenario", "task", "gates", "numeric"))
    assert fedper and not any(n.startswith("towers") for n in fedper)
    assert uploaded_names(names, fedbn=True, share=()) == []
    with pytest.raises(ValueError, match="unknown part"):
        shared_parts({"share": ["global", "heads"]})


def test_shared_embedding_names_and_when_they_travel():
    from pfms_client.template import is_shared_table, shares_embeddings, touched_names

    role = classify("shared_embedding.item_id.weight")
    assert role.group is Group.SHARED_EMBEDDING and role.unit == "shared_embedding.item_id" and not role.is_bn
    assert is_shared_table("shared_embedding.item_id.weight") and not is_shared_table("shared_embedding.item_id.rows")
    assert touched_names("shared_embedding.item_id.weight") == {
        p: f"shared_embedding.item_id.{p}" for p in ("rows", "counts", "values", "deltas")}
    switch = {"enabled": True, "buckets": 8, "hash_seed": 0}
    pf = {"share": list(PF), "algorithm": "pfmsmtrec", "shared_embeddings": switch}
    assert shares_embeddings(pf) and "shared_embedding" in shared_parts(pf)
    assert is_uploaded("shared_embedding.item_id.weight", fedbn=True, share=shared_parts(pf))
    local = {"share": [], "algorithm": "none", "shared_embeddings": switch}
    assert not shares_embeddings(local) and shared_parts(local) == frozenset()
    off = {**pf, "shared_embeddings": {**switch, "enabled": False}}
    assert shared_parts(off) == frozenset(PF)
