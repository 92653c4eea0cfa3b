"""Every value of the composed config checked before anything starts: a rule per dotted key.

A rule says what a good value is (type, sign or range, choices); ``check_config``
raises ConfigError with one line naming the first bad key, e.g.
``train.lr=-1: expected a number > 0``. Types are strict: an integer key takes no
bool, float or string (Hydra reads ``num_rounds=abc`` as the string 'abc'), a
number key takes ints and floats but no bool, a bool key only true/false.

The client package checks what it uses (``CLIENT_RULES``, the ``dataset`` node
through DatasetSettings and the generator/source classes); the keys under
``SERVER_OWNED`` are checked by pfms_server.config_check, which the server
entry points (pfms-run, pfms-compare, the ServerApp) add on top. A leaf key that
no rule covers is an unknown key (e.g. one added with Hydra's ``+``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import ConfigError
from .template import FEDBN_MODES, SHAREABLE, VALUE_ENCODINGS

# What the client code accepts; tests/server/test_config_check.py checks these equal the
# constants of the modules that use them (local_update.MODES, client_app.SPLITS and
# mmoe.build_model), which import torch: this module stays light for the server.
CLIENT_MODES = ("plain", "fedrep", "ditto")
EVAL_SPLITS = ("train", "val", "test")
OUTPUT_BIAS = ("zero", "prior")

# Keys pfms_server.config_check checks (the client never reads their values, or only
# compares towers.mode with "local"); the client's unknown-key check leaves them alone.
SERVER_OWNED = (
    "strategy.algorithm",
    "strategy.conflict",
    "strategy.personalization",
    "strategy.towers",
    "strategy.fedamp",
    "strategy.participation",
    "server.round_timeout",
    "server.poll_interval",
    "simulation.client_cpus",
)
DATASET = "dataset"  # checked as a whole by DatasetSettings.from_config (see check_dataset)


# --- rules -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """A good value: ``ok(value)`` is true; ``expect`` says what that is, for the message."""

    expect: str
    ok: Callable[[Any], bool]
    nullable: bool = False
    required: bool = True
    item: Rule | None = None  # list rules: each element is checked by this rule, named key[i]

    def problem(self, key: str, value: Any) -> str | None:
        if value is None:
            return None if self.nullable else f"{key}=null: expected {self.describe()}"
        if self.item is not None and isinstance(value, list):
            for i, v in enumerate(value):
                if (p := self.item.problem(f"{key}[{i}]", v)) is not None:
                    return p
        if not self.ok(value):
            return f"{key}={show(value)}: expected {self.describe()}"
        return None

    def describe(self) -> str:
        return f"{self.expect} or null" if self.nullable else self.expect

    def optional(self) -> Rule:
        """The same rule for a key only some configs have (a cross-check may still require it)."""
        return Rule(self.expect, self.ok, self.nullable, False, self.item)


def show(value: Any) -> str:
    """A value as the message shows it: YAML's true/false/null, else Python's repr."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else repr(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bounds(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> tuple[str, Callable[[float], bool]]:
    if lo is not None and hi is not None:
        text = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        text = f"{'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        text = f"{'<' if hi_open else '<='} {hi:g}"
    else:
        text = ""

    def inside(v: float) -> bool:
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return not (hi is not None and (v >= hi if hi_open else v > hi))

    return text, inside


def integer(lo: int | None = None, hi: int | None = None, *, nullable: bool = False) -> Rule:
    text, inside = _bounds(lo, hi, False, False)
    return Rule(f"an integer {text}".rstrip(), lambda v: _is_int(v) and inside(v), nullable)


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
           nullable: bool = False) -> Rule:
    text, inside = _bounds(lo, hi, lo_open, hi_open)
    return Rule(f"a number {text}".rstrip(), lambda v: _is_number(v) and inside(v), nullable)


def boolean() -> Rule:
    return Rule("true or false", lambda v: isinstance(v, bool))


def text(*, nullable: bool = False) -> Rule:
    """A non-empty name or path (Hydra reads an unquoted number as int, so ints pass too)."""
    return Rule("a non-empty string", lambda v: (isinstance(v, str) and v.strip() != "") or _is_int(v), nullable)


def one_of(choices: Iterable[str]) -> Rule:
    options = tuple(choices)
    return Rule(f"one of {list(options)}", lambda v: isinstance(v, str) and v in options)


def list_of(item: Rule, *, min_len: int = 0, unique: bool = False) -> Rule:
    words = ["a", "non-empty" if min_len == 1 else "", "list", f"of at least {min_len}" if min_len > 1 else ""]
    expect = " ".join(w for w in words if w) + (" of distinct items" if unique else "") + f", each {item.expect}"

    def ok(v: Any) -> bool:
        if not isinstance(v, list) or len(v) < min_len:
            return False
        return not unique or len({repr(x) for x in v}) == len(v)

    return Rule(expect, ok, item=item)


Rules = Mapping[str, Rule]
# A check over the whole config (plain dicts): the message of the first problem, or None.
CrossCheck = Callable[[Mapping[str, Any]], "str | None"]


# --- walking the config ----------------------------------------------------------------
_MISSING = object()


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf; lists are leaves."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from leaves(v, f"{prefix}{k}.")
    elif prefix:
        yield prefix[:-1], node


def get(cfg: Mapping[str, Any], key: str, default: Any = _MISSING) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def has(cfg: Mapping[str, Any], key: str) -> bool:
    return get(cfg, key) is not _MISSING


def under(key: str, prefixes: Iterable[str]) -> bool:
    """``key`` is one of ``prefixes`` or lies below one of them."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def plain(cfg: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def check_config(cfg: Any, rules: Rules, cross: Sequence[CrossCheck] = (), *, owned: Iterable[str] = (),
                 not_mine: Iterable[str] = ()) -> None:
    """Raise ConfigError naming the first key whose value breaks its rule.

    ``owned``: prefixes these rules are responsible for; a leaf under one of them
    (none given: anywhere) that no rule covers and that is not under ``not_mine``
    is an unknown key. Then every present key's rule, every required key's
    presence, then the cross-checks, in that order.
    """
    node = plain(cfg)
    owned, not_mine = tuple(owned), tuple(not_mine)
    for key, value in leaves(node):
        if key in rules or under(key, not_mine) or (owned and not under(key, owned)):
            continue
        if any(r.startswith(key + ".") for r in rules):  # a mapping replaced by a scalar
            raise ConfigError(f"{key}={show(value)}: expected a mapping with keys "
                              f"{sorted(r[len(key) + 1:] for r in rules if r.startswith(key + '.'))}")
        parent = key.rpartition(".")[0]
        known = sorted(r.rpartition(".")[2] for r in rules if r.rpartition(".")[0] == parent)
        raise ConfigError(f"{key}={show(value)}: unknown key" + (f"; known keys here: {known}" if known else ""))
    for key, rule in rules.items():
        value = get(node, key)
        if value is _MISSING:
            if rule.required:
                raise ConfigError(f"{key}: missing; expected {rule.describe()}")
            continue
        if (problem := rule.problem(key, value)) is not None:
            raise ConfigError(problem)
    for check in cross:
        if (problem := check(node)) is not None:
            raise ConfigError(problem)


def _device_ok(value: Any) -> bool:
    """train.device: auto, cpu, cuda or cuda:<index> (trainer.device_problem, without importing torch)."""
    if not isinstance(value, str):
        return False
    head, sep, index = value.partition(":")
    return value in ("auto", "cpu", "cuda") or (head == "cuda" and sep == ":" and index.isdigit())


# --- the client's rules ----------------------------------------------------------------
CLIENT_RULES: dict[str, Rule] = {
    "seed": integer(0),  # numpy seeds the data splits with it: no negatives
    "num_rounds": integer(1),
    "run_name": text(nullable=True),
    "resume": text(nullable=True),
    "paths.home": text(),
    "paths.data": text(),
    "paths.runs": text(),
    "train.local_epochs": integer(1),
    "train.batch_size": integer(2),  # BatchNorm needs two rows
    "train.lr": number(0, lo_open=True),
    "train.weight_decay": number(0),
    "train.mu": number(0),
    "train.num_threads": integer(1, nullable=True),
    "train.local_steps": integer(1, nullable=True),  # null = whole epochs
    "train.device": Rule("auto, cpu, cuda or cuda:<index>", lambda v: _device_ok(v)),
    "train.in_memory_max_rows": integer(0),
    "eval.every": integer(1),
    "eval.splits": list_of(one_of(EVAL_SPLITS), min_len=1, unique=True),
    "eval.batch_size": integer(1),
    "server.plot": boolean(),
    "model.embed_dim": integer(1),
    "model.template.global": integer(0),
    "model.template.scenario": integer(0),
    "model.template.task": integer(0),
    "model.expert_hidden": list_of(integer(1), min_len=1),
    "model.tower_hidden": list_of(integer(1)),
    "model.dropout": number(0, 1, hi_open=True),
    "model.bn_momentum": number(0, 1),
    "model.output_bias": one_of(OUTPUT_BIAS),
    "strategy.name": text(),
    "strategy.share": list_of(one_of(SHAREABLE), unique=True),
    "strategy.fedbn": Rule("true, false or stats",
                           lambda v: isinstance(v, bool) or (isinstance(v, str) and v in FEDBN_MODES)),
    "strategy.mu": number(0, nullable=True),  # null = train.mu
    "strategy.client.mode": one_of(CLIENT_MODES),
    "strategy.client.head_epochs": integer(1).optional(),  # fedrep
    "strategy.client.lam": number(0).optional(),  # ditto
    "strategy.shared_embeddings.enabled": boolean(),
    "strategy.shared_embeddings.buckets": integer(1),
    "strategy.shared_embeddings.hash_seed": integer(0),
    "strategy.shared_embeddings.values": one_of(VALUE_ENCODINGS),
    "strategy.shared_embeddings.upload_cap": number(0, lo_open=True, nullable=True).optional(),
    "strategy.shared_embeddings.server_lr": number(0, lo_open=True).optional(),  # read by the server
    "strategy.shared_embeddings.residual": boolean().optional(),
}


def _template_has_an_expert(cfg: Mapping[str, Any]) -> str | None:
    tpl = get(cfg, "model.template", {})
    if sum(int(tpl.get(k, 0)) for k in ("global", "scenario", "task")) == 0:
        return f"model.template={tpl}: expected at least one expert (global + scenario + task >= 1)"
    return None


_MODE_NEEDS = {"fedrep": "head_epochs", "ditto": "lam"}


def _client_mode_has_its_knob(cfg: Mapping[str, Any]) -> str | None:
    mode = get(cfg, "strategy.client.mode")
    knob = _MODE_NEEDS.get(mode)  # type: ignore[arg-type]
    if knob is not None and not has(cfg, f"strategy.client.{knob}"):
        return (f"strategy.client.mode={mode!r} needs strategy.client.{knob} (missing): use strategy={mode} "
                f"or add +strategy.client.{knob}=<value>")
    return None


def _shared_embeddings_have_fields(cfg: Mapping[str, Any]) -> str | None:
    if get(cfg, "strategy.shared_embeddings.enabled", False) is True and not get(
            cfg, "dataset.schema.shared_fields", None):
        return (f"strategy.shared_embeddings.enabled=true: dataset {get(cfg, 'dataset.name', '?')!r} declares no "
                "schema.shared_fields (categorical fields whose ids mean the same in every scenario)")
    return None


def check_dataset(node: Any) -> None:
    """The ``dataset`` node: DatasetSettings (every key, unknown ones refused) plus the
    generator knobs' and the raw-file source's values; errors name the key."""
    from .data.settings import DatasetSettings
    from .data.synthetic.params import GeneratorParams, TenrecGeneratorParams

    try:
        settings = DatasetSettings.from_config(node)
        if settings.generator is not None:
            params = TenrecGeneratorParams if settings.layout == "tenrec" else GeneratorParams
            params.from_dict(settings.generator, where="dataset.generator", scenarios=settings.scenarios)
        if settings.source is not None:
            from .data.movielens import MovieLensSource  # the only source kind (pandas: import on demand)

            MovieLensSource.from_dict(settings.source)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(dataset_message(exc)) from exc


def dataset_message(exc: BaseException) -> str:
    """A dataset error as one line that starts with the key (``dataset.``...)."""
    msg = " ".join(str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).split())
    if msg.startswith(DATASET):
        return msg
    if msg.startswith(("schema", "generator", "split", "vocab", "source")):
        return f"{DATASET}.{msg}"
    return f"{DATASET}: {msg}"


def _dataset(cfg: Mapping[str, Any]) -> str | None:
    if not has(cfg, DATASET):
        return f"{DATASET}: missing"
    check_dataset(cfg[DATASET])
    return None


CLIENT_CHECKS: tuple[CrossCheck, ...] = (_template_has_an_expert, _client_mode_has_its_knob, _dataset,
                                         _shared_embeddings_have_fields)


def check_client_config(cfg: Any) -> None:
    """Everything the client package reads; keys under SERVER_OWNED are left to the server."""
    check_config(cfg, CLIENT_RULES, CLIENT_CHECKS, not_mine=(*SERVER_OWNED, DATASET))
