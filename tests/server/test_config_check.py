"""Every config value is checked before anything starts, and a bad one names its key.

Rules: pfms_client/config_check.py (what the client package reads; load_config runs
them) and pfms_server/config_check.py (the server's keys; load_run_config, used by
pfms-run, pfms-compare and the ServerApp). The coverage tests compose every shipped
dataset x model x strategy and every arms-file arm: each leaf key must have a rule,
so a new key without one fails here.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from itertools import product
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from pfms_client import client_cli
from pfms_client.config import ConfigError, conf_dir, load_config
from pfms_client.config_check import (
    CLIENT_MODES,
    CLIENT_RULES,
    DATASET,
    EVAL_SPLITS,
    OUTPUT_BIAS,
    SERVER_OWNED,
    check_dataset,
    leaves,
    under,
)
from pfms_server.deploy import local_run, server_cli
from pfms_server.experiments.compare import load_arms
from pfms_server.experiments.compare import main as compare_main
from pfms_server.config_check import SERVER_RULES, check_server_config, load_run_config

# --- bad values: one line naming the key ---------------------------------------------------------------
MAGIC = "strategy.conflict.method='magic': expected one of ['cagrad', 'pcgrad', 'mean']"
NEG_LR = "train.lr=-1: expected a number > 0"
ABC_ROUNDS = "num_rounds='abc': expected an integer >= 1"

BAD = [  # (overrides, the message starts with)
    # the README's examples
    ("strategy.conflict.method=magic", MAGIC),
    ("train.lr=-1", NEG_LR),
    ("num_rounds=abc", ABC_ROUNDS),
    # signs and ranges
    ("num_rounds=0", "num_rounds=0: expected an integer >= 1"),
    ("train.batch_size=1", "train.batch_size=1: expected an integer >= 2"),
    ("train.weight_decay=-0.1", "train.weight_decay=-0.1: expected a number >= 0"),
    ("train.num_threads=0", "train.num_threads=0: expected an integer >= 1 or null"),
    ("seed=-1", "seed=-1: expected an integer >= 0"),
    ("eval.every=0", "eval.every=0: expected an integer >= 1"),
    ("model.dropout=1.5", "model.dropout=1.5: expected a number in [0, 1)"),
    ("model.bn_momentum=2", "model.bn_momentum=2: expected a number in [0, 1]"),
    ("strategy.mu=-0.01", "strategy.mu=-0.01: expected a number >= 0 or null"),
    ("strategy.personalization.alpha_init=2", "strategy.personalization.alpha_init=2: expected a number in [0, 1]"),
    ("strategy.towers.momentum=1", "strategy.towers.momentum=1: expected a number in [0, 1)"),
    ("strategy.conflict.c=-0.4", "strategy.conflict.c=-0.4: expected a number >= 0"),
    ("strategy.participation.fraction_train=0", "strategy.participation.fraction_train=0: expected a number in (0, 1]"),
    ("strategy.participation.min_train_nodes=5", "strategy.participation.min_train_nodes=5: expected an integer in "
                                                 "[1, 4] (dataset.scenarios has 4"),
    ("server.round_timeout=0", "server.round_timeout=0: expected a number > 0"),
    ("dataset.split.val_fraction=2", "dataset.split.val_fraction=2: expected a number in [0, 1)"),
    ("dataset.max_rows=0", "dataset.max_rows=0: expected an integer >= 1 or null"),
    ("dataset.generator.click_shared=-1", "dataset.generator.click_shared=-1: expected a number >= 0"),
    ("dataset.generator.ctr_range=[0.5,0.1]", "dataset.generator.ctr_range=[0.5, 0.1]: expected [low, high]"),
    ("dataset=synthetic_tenrec dataset.generator.user_window=2", "dataset.generator: user_window must be in (0, 1]"),
    # enums
    ("strategy.client.mode=x", "strategy.client.mode='x': expected one of ['plain', 'fedrep', 'ditto']"),
    ("strategy.personalization.mode=auto",
     "strategy.personalization.mode='auto': expected one of ['learned', 'fixed']"),
    ("strategy.towers.mode=global", "strategy.towers.mode='global': expected one of ['attention', 'fedavg', 'local']"),
    ("strategy.algorithm=fedsgd", "strategy.algorithm='fedsgd': expected one of ['pfmsmtrec', 'fedavg', 'fedamp', "
                                  "'none', 'centralized']"),
    ("model.output_bias=mean", "model.output_bias='mean': expected one of ['zero', 'prior']"),
    ("eval.splits=[foo]", "eval.splits[0]='foo': expected one of ['train', 'val', 'test']"),
    ("eval.splits=[]", "eval.splits=[]: expected a non-empty list of distinct items"),
    ("eval.splits=[test,test]", "eval.splits=['test', 'test']: expected a non-empty list of distinct items"),
    ("strategy.share=[global,bogus]", "strategy.share[1]='bogus': expected one of ['global', 'scenario'"),
    ("strategy.shared_embeddings.values=bf16",
     "strategy.shared_embeddings.values='bf16': expected one of ['float32', 'float16-delta']"),
    ("dataset.numeric_transform=minmax", "dataset.numeric_transform: 'minmax' is not one of"),
    # types: a bool, float or string where an integer is expected, and the like
    ("train.local_epochs=true", "train.local_epochs=true: expected an integer >= 1"),
    ("num_rounds=2.5", "num_rounds=2.5: expected an integer >= 1"),
    ("train.lr=fast", "train.lr='fast': expected a number > 0"),
    ("strategy.fedbn=1", "strategy.fedbn=1: expected true, false or stats"),
    ("server.plot=yes", "server.plot='yes': expected true or false"),
    ("model.expert_hidden=64", "model.expert_hidden=64: expected a non-empty list"),
    ("model.expert_hidden=[]", "model.expert_hidden=[]: expected a non-empty list"),
    ("model.tower_hidden=[32,x]", "model.tower_hidden[1]='x': expected an integer >= 1"),
    ("dataset.split.seed=abc", "dataset.split.seed='abc': expected an integer >= 0"),
    ("dataset.vocab.min_count=true", "dataset.vocab.min_count=True: expected an integer >= 1"),
    ("dataset.scenarios=NL", "dataset.scenarios='NL': expected a non-empty list of names"),
    ("dataset.generator.rows_train=abc", "dataset.generator.rows_train='abc': expected an integer >= 0"),
    ("dataset=movielens dataset.source.like_min_rating=x", "dataset.source.like_min_rating='x': expected a number"),
    ("strategy=fedamp strategy.fedamp.self_weight=1.5", "strategy.fedamp.self_weight=1.5: expected a number in [0, 1]"),
    ("strategy=ditto strategy.client.lam=-1", "strategy.client.lam=-1: expected a number >= 0"),
    ("strategy=fedrep strategy.client.head_epochs=0", "strategy.client.head_epochs=0: expected an integer >= 1"),
    # unknown, missing and inconsistent keys
    ("+train.lrr=1", "train.lrr=1: unknown key; known keys here: ['batch_size',"),
    ("+strategy.conflict.cc=1", "strategy.conflict.cc=1: unknown key; known keys here: ['c', 'method']"),
    ("+dataset.split.sed=1", "dataset.split: unknown key(s) ['sed']"),
    ("~train.mu", "train.mu: missing; expected a number >= 0"),
    ("train=3", "train=3: expected a mapping with keys ['batch_size',"),
    ("strategy.client.mode=ditto", "strategy.client.mode='ditto' needs strategy.client.lam (missing)"),
    ("strategy=fedavg strategy.algorithm=pfmsmtrec", "strategy.algorithm='pfmsmtrec' needs strategy.conflict.method"),
    ("model.template.global=0 model.template.scenario=0 model.template.task=0",
     "model.template={'global': 0, 'scenario': 0, 'task': 0}: expected at least one expert"),
    ("strategy=centralized", "strategy.algorithm='centralized': the pooled-rows reference runs without Flower"),
    ("resume=/nonexistent/run", "resume='/nonexistent/run': no server checkpoint (server_state/state.json)"),
]


def _server_side(overrides: str) -> bool:
    key = overrides.split()[-1].lstrip("+~").split("=")[0]
    return under(key, SERVER_OWNED) or key in ("strategy", "resume", "strategy.algorithm")


@pytest.mark.parametrize("overrides, message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_is_one_line_naming_the_key(overrides, message):
    """The client's keys fail in load_config already (pfms-client and the ClientApp only have
    that); the server's in load_run_config (pfms-run, pfms-compare, the ServerApp)."""
    with pytest.raises(ConfigError) as info:
        load_run_config(overrides) if _server_side(overrides) else load_config(overrides)
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text


def test_the_server_keys_are_the_server_checks_business():
    """load_config leaves the server's keys alone (their choices live in pfms_server)."""
    cfg = load_config("strategy.conflict.method=magic strategy.participation.min_train_nodes=9")
    assert cfg.strategy.conflict.method == "magic"
    with pytest.raises(ConfigError, match="strategy.conflict.method='magic'"):
        check_server_config(cfg)


GOOD = [  # boundaries that must stay allowed, a few compositions' worth
    "model.dropout=0 dataset.split.val_fraction=0 strategy.personalization.alpha_init=1 train.batch_size=2 "
    "train.lr=1 strategy.mu=null train.num_threads=1 strategy.participation.fraction_train=1 "
    "strategy.participation.min_train_nodes=4 strategy.participation.min_available_nodes=4 eval.splits=[train] "
    "seed=0 run_name=2024 model.tower_hidden=[] strategy.conflict.c=0 strategy.towers.momentum=0 dataset.max_rows=1",
    "strategy.share=[] strategy.mu=0 strategy.client.mode=ditto +strategy.client.lam=0 "
    "model.template.global=0 model.template.scenario=8 model.template.task=0 model.bn_momentum=1",
]


@pytest.mark.parametrize("overrides", GOOD)
def test_good_boundary_values_pass(overrides):
    cfg = load_run_config(overrides)
    for item in overrides.split():
        key = item.lstrip("+").partition("=")[0]
        assert OmegaConf.select(cfg, key, default="absent") != "absent"


def test_a_resume_folder_with_a_checkpoint_passes(tmp_path):
    (tmp_path / "server_state").mkdir()
    (tmp_path / "server_state" / "state.json").write_text("{}")
    assert load_run_config(f"resume={tmp_path}").resume == str(tmp_path)


# --- coverage: every leaf key of every shipped composition has a rule -----------------------------------
def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def _pairwise() -> list[tuple[str, str, str]]:
    """Every (dataset, strategy) pair once, the model alternating over the grid: each pair of
    groups (dataset-model, model-strategy, dataset-strategy) is covered, in half the
    compositions of the full product. Config keys come from one group each, and the
    interpolations between groups are pairs, so pairwise coverage is what the check needs."""
    models = _options("model")
    return [(d, models[(i + j) % len(models)], s)
            for i, d in enumerate(_options("dataset")) for j, s in enumerate(_options("strategy"))]


COMPOSITIONS = [f"dataset={d} model={m} strategy={s}" for d, m, s in _pairwise()]


def _uncovered(cfg) -> list[str]:
    """Leaf keys outside the dataset node that no client or server rule covers."""
    rules = {**CLIENT_RULES, **SERVER_RULES}
    return [k for k, _ in leaves(OmegaConf.to_container(cfg)) if not under(k, (DATASET,)) and k not in rules]


def test_the_compositions_cover_every_pair_of_options():
    combos = _pairwise()
    groups = [_options("dataset"), _options("model"), _options("strategy")]
    assert min(len(g) for g in groups) >= 2 and len(groups[0]) >= 5 and len(groups[2]) >= 10
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert {(c[a], c[b]) for c in combos} == set(product(groups[a], groups[b])), (a, b)


@pytest.mark.parametrize("overrides", COMPOSITIONS)
def test_every_shipped_composition_passes_and_every_key_has_a_rule(overrides):
    cfg = load_config(overrides)  # the client's checks pass
    check_server_config(cfg, flower=False)  # the server's, as pfms-compare runs it
    if cfg.strategy.algorithm != "centralized":
        check_server_config(cfg)  # and as a Flower run (pfms-run, the ServerApp)
    assert _uncovered(cfg) == []


def _arms() -> dict[str, list[str]]:
    """Every arm of every arms file (with the file's common overrides), one entry per distinct list.
    The test below composes each through load_run_config, as pfms-compare does: it is also what
    shows that every shipped arms file composes (test_compare's dry run covers the plan itself)."""
    out: dict[str, list[str]] = {}
    for name in _options("compare"):
        spec = load_arms(name)
        for arm, ovr in spec.arms.items():
            out.setdefault(" ".join([*spec.overrides, *ovr]) or "(none)", [*spec.overrides, *ovr])
    return out


@pytest.mark.parametrize("overrides", list(_arms().values()), ids=list(_arms()))
def test_every_arm_passes_and_every_key_has_a_rule(overrides):
    assert _uncovered(load_run_config(overrides, flower=False)) == []


def _mapping_paths(node, prefix=DATASET):
    """Every mapping inside the dataset node, except source.groups (user-named groups of scenarios)."""
    yield prefix
    for k, v in node.items():
        if isinstance(v, dict) and f"{prefix}.{k}" != f"{DATASET}.source.groups":
            yield from _mapping_paths(v, f"{prefix}.{k}")


@pytest.mark.parametrize("dataset", _options("dataset"))
def test_dataset_settings_refuse_an_unknown_key_at_every_level(dataset):
    """The dataset node's rule is DatasetSettings: it knows every key, so a new one fails there."""
    node = OmegaConf.to_container(load_config(f"dataset={dataset}").dataset)
    check_dataset(node)
    paths = list(_mapping_paths(node))
    assert f"{DATASET}.split" in paths and f"{DATASET}.schema" in paths
    for path in paths:
        bad = copy.deepcopy(node)
        target = bad
        for part in path.split(".")[1:]:
            target = target[part]
        target["zz_new"] = 1
        with pytest.raises(ConfigError, match="zz_new"):
            check_dataset(bad)


def test_client_and_server_rules_split_the_keys_cleanly():
    assert not set(CLIENT_RULES) & set(SERVER_RULES)
    assert not [k for k in CLIENT_RULES if under(k, SERVER_OWNED)]
    assert not [k for k in SERVER_RULES if not under(k, SERVER_OWNED)]
    assert all(any(under(k, (p,)) for k in SERVER_RULES) for p in SERVER_OWNED)


def test_client_choices_are_the_ones_the_client_code_accepts():
    from pfms_client import client_app
    from pfms_server.experiments import centralized
    from pfms_client.local_update import MODES
    from pfms_client.mmoe import build_model

    assert CLIENT_MODES == MODES
    assert EVAL_SPLITS == client_app.SPLITS == centralized.SPLITS
    model = OmegaConf.to_container(load_config().model)
    for bias in OUTPUT_BIAS:
        build_model({**model, "output_bias": bias}, [3, 4], 2, 2, seed=0, positive_rates=[0.1, 0.01])
    with pytest.raises(ValueError, match="output_bias"):
        build_model({**model, "output_bias": "mean"}, [3, 4], 2, 2, seed=0)


def test_the_client_check_imports_neither_the_server_nor_torch():
    code = ("import sys; from pfms_client.config import load_config; load_config('train.lr=0.1'); "
            "print(sorted(m for m in sys.modules if m.startswith('pfms_server') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- through the entry points: nothing starts ----------------------------------------------------------
@pytest.fixture
def no_processes(monkeypatch):
    """Any attempt to start a process (SuperLink, flwr run, SuperNode) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[:1]}")
    monkeypatch.setattr(local_run.subprocess, "Popen", refuse)
    monkeypatch.setattr(local_run.subprocess, "call", refuse)
    monkeypatch.setattr(client_cli, "run_foreground", refuse)
    monkeypatch.setattr(client_cli, "reachable", refuse)
    monkeypatch.setattr(server_cli, "run_foreground", refuse)


@pytest.mark.parametrize("override, message", [(b[0], b[1]) for b in BAD[:3]] + [
    ("num_rounds=0", "num_rounds=0: expected an integer >= 1"),
    ("strategy=centralized", "strategy.algorithm='centralized': the pooled-rows reference runs without Flower")])
def test_pfms_run_stops_before_the_superlink(override, message, no_processes, capsys):
    t0 = time.perf_counter()
    assert local_run.main([override]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"pfms-run: {message}") and err.count("\n") == 1, err
    assert "SuperLink pid" not in out
    assert time.perf_counter() - t0 < 30  # a compose and a check, not a run


def test_pfms_run_console_script_stops_before_the_superlink():
    script = Path(sys.executable).parent / "pfms-run"
    proc = subprocess.run([str(script), "strategy.conflict.method=magic"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"pfms-run: {MAGIC}\n"
    assert "SuperLink pid" not in proc.stdout


def test_pfms_compare_stops_before_any_run(tmp_path, no_processes, capsys):
    out = tmp_path / "never"
    assert compare_main(["--arms", "smoke", "train.lr=-1", "--out", str(out), f"paths.home={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pfms-compare: overrides for every arm") and NEG_LR in err, err
    assert not out.exists()
    arms = tmp_path / "arms.yaml"
    arms.write_text("arms:\n  ok: []\n  bad: [strategy.conflict.method=magic]\nseeds: [1]\n")
    assert compare_main(["--arms", str(arms), "--out", str(out), f"paths.home={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "arm 'bad'" in err and MAGIC in err and err.count("\n") == 1, err
    assert compare_main(["--arms", "smoke", "resume=x", "--out", str(out), f"paths.home={tmp_path}"]) == 2
    assert "resume='x': pfms-compare gives every run its own folder" in capsys.readouterr().err
    assert not out.exists()


def test_pfms_client_stops_on_the_config_before_the_network(tmp_path, no_processes, capsys):
    argv = ["--scenario", "NL", "--data", str(tmp_path), "--superlink", "127.0.0.1:9", "--insecure",
            "--overrides", "train.lr=-1"]
    assert client_cli.main(argv) == 2
    assert capsys.readouterr().err == f"pfms-client: {NEG_LR}\n"


def test_the_server_app_checks_before_sending_anything(tmp_path):
    """`flwr run .` (no pfms-run in front): the ServerApp fails on the config, nothing sent or written."""
    from unittest.mock import MagicMock

    from pfms_server.server_app import main

    grid = MagicMock()
    context = SimpleNamespace(run_config={"overrides": f"paths.home={tmp_path} num_rounds=abc"})
    with pytest.raises(ConfigError) as info:
        main(grid, context)
    assert str(info.value) == ABC_ROUNDS
    assert grid.mock_calls == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    (["--insecure", "--port", "0"], "--port 0 is not a TCP port"),
    (["--insecure", "--port", "70000"], "--port 70000 is not a TCP port"),
    (["--insecure", "--enable-supernode-auth"], "--enable-supernode-auth needs TLS"),
    (["--certs-dir", "/nonexistent/certs"], "missing certificate file(s): /nonexistent/certs/ca.crt"),
    (["--insecure", "--log-file", "/nonexistent/dir/superlink.log"], "--log-file /nonexistent/dir/superlink.log: "
                                                                     "folder /nonexistent/dir does not exist"),
    (["--insecure", "--database", "/nonexistent/dir/state.db"], "--database /nonexistent/dir/state.db: "
                                                                "folder /nonexistent/dir does not exist"),
])
def test_pfms_server_checks_its_own_options(argv, message, no_processes, capsys):
    """pfms-server has no run config (it comes with `flwr run`); its options are checked up front."""
    assert server_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pfms-server: {message}") and err.count("\n") == 1, err


@pytest.mark.parametrize("overrides, message", [
    (["dataset=aliexpress", "strategy.shared_embeddings.enabled=true"], "declares no schema.shared_fields"),
    (["strategy=fedamp", "strategy.shared_embeddings.enabled=true"], "strategy.algorithm='fedamp' does not take"),
    (["strategy.shared_embeddings.buckets=0"], "strategy.shared_embeddings.buckets=0: expected an integer >= 1"),
    (["strategy.shared_embeddings.upload_cap=0"], "strategy.shared_embeddings.upload_cap=0: expected a number > 0"),
    (["strategy.shared_embeddings.server_lr=-1"], "strategy.shared_embeddings.server_lr=-1: expected a number > 0"),
    (["strategy.shared_embeddings.upload_cap=lots"], "strategy.shared_embeddings.upload_cap='lots': expected a number"),
    (["dataset=movielens", "dataset.schema.shared_fields=[nope]"], "schema.shared_fields: 'nope' is not a categorical"),
])
def test_shared_embeddings_config_is_checked(overrides, message):
    from pfms_server.config_check import load_run_config

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_run_config(overrides)


@pytest.mark.parametrize("share, ok", [("[global,scenario,tower]", True), ("[global,scenario]", True),
                                        ("[global,scenario,tower,task]", False),
                                        ("[global,scenario,tower,gates,numeric]", False)])
def test_pfmsmtrec_refuses_to_upload_what_it_does_not_aggregate(share, ok):
    """Task experts, gates or the numeric layer uploaded under pfmsmtrec would come back as the
    server's stale copy every round, silently undoing the clients' training of them."""
    from pfms_server.config_check import load_run_config

    if ok:
        load_run_config([f"strategy.share={share}"], flower=False)
        return
    with pytest.raises(ConfigError, match=r"the pfmsmtrec rule aggregates only \['global', 'scenario', 'tower'\]"):
        load_run_config([f"strategy.share={share}"], flower=False)
    load_run_config(["strategy=fedavg", f"strategy.share={share}"], flower=False)  # the FedAvg family may
