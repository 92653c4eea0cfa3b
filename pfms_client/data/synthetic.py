"""Synthetic AliExpress-schema scenarios with known shift and known label structure.

Pure numpy, no files (see ``generator.py`` for writing). What the data is made of:

* Numerical features (63): latent Gaussians with one correlation structure
  shared by all scenarios (low-rank factors), shifted and rescaled per scenario,
  squashed to [0, 1] like MTReclib's numericals, and zero ("missing") with a
  per-scenario, per-feature probability.
* Categorical ids (16): field 1 is a constant site code per scenario (as in the
  real files); every other field has an id space shared by all scenarios, of
  which a scenario uses a window (windows partly overlap), with a Zipf
  popularity of its own (exponent and which ids are popular differ).
* Labels: ``click`` logit = bias + shared weights.u + scenario weights.u +
  shared pairwise interactions + id effects; ``conversion`` (only on clicks)
  logit = bias + part of the shared click direction + conversion-only weights
  (same in all scenarios) + scenario weights + its own id effects. Id effects
  mix a part that belongs to the raw id in every scenario and a local part.
  Biases are calibrated so the expected CTR and CTCVR hit per-scenario targets.

Randomness: structure shared by all scenarios comes from ``seed`` alone;
everything per scenario from ``(seed, crc32(scenario name))``, so one scenario
generated alone is identical to the same scenario in a full run, whatever the
list of scenarios is.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, fields
from typing import Any, get_args, get_origin, get_type_hints

import numpy as np

# The MTReclib AliExpress layout (82 columns).
ID_COLUMN = "search_id"
NUM_CATEGORICAL = 16
NUM_NUMERICAL = 63
CATEGORICAL = tuple(f"categorical_{i}" for i in range(1, NUM_CATEGORICAL + 1))
NUMERICAL = tuple(f"numerical_{i}" for i in range(1, NUM_NUMERICAL + 1))
LABELS = ("click", "conversion")
COLUMNS = (ID_COLUMN, *CATEGORICAL, *NUMERICAL, *LABELS)

_SHARED_STREAM = 0  # rng stream tags, so shared and per-scenario draws never collide
_SCENARIO_STREAM = 1
_BISECT_STEPS = 60
_BISECT_BOUND = 30.0
_FIELD_WEIGHT_RANGE = (0.2, 1.0)  # relative importance of the id fields (then normalised)
_SEARCH_ID_BASE_MAX = 10**9  # search ids start at a random per-scenario base below this


class KnobParams:
    """Config <-> frozen knob dataclass: an unknown knob is an error; YAML lists are tuples inside."""

    @classmethod
    def knob_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, knobs: dict[str, Any], where: str = "generator") -> Any:
        """Every knob a value of its field's type, >= 0 (all are counts, seeds, stds, rates,
        shares or exponents), ranges as [low, high] with low <= high; errors name ``where.knob``."""
        names = cls.knob_names()
        unknown = sorted(set(knobs) - names)
        if unknown:
            raise ValueError(f"{where}: unknown knob(s) {unknown}; known: {sorted(names)}")
        hints = get_type_hints(cls)
        for name, value in knobs.items():
            if (expected := _knob_problem(hints[name], value)) is not None:
                raise ValueError(f"{where}.{name}={value!r}: expected {expected}")
        clean = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in knobs.items()}
        try:
            return cls(**clean)
        except ValueError as exc:  # __post_init__ says "generator: ..."
            msg = str(exc)
            raise ValueError(where + msg[len("generator"):] if msg.startswith("generator") else msg) from exc

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _knob_problem(hint: Any, value: Any) -> str | None:
    """What a knob of type ``hint`` should be, when ``value`` is not that; else None."""
    if get_origin(hint) is tuple:
        (item,) = set(get_args(hint))
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 2
            or any(_knob_problem(item, v) is not None for v in value)
            or value[0] > value[1]
        ):
            kind = "integers" if item is int else "numbers"
            return f"[low, high]: two {kind} with 0 <= low <= high"
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if hint is float else int):
        return "an integer >= 0" if hint is int else "a number >= 0"
    if not math.isfinite(value) or value < 0:
        return "an integer >= 0" if hint is int else "a number >= 0"
    return None


@dataclass(frozen=True)
class GeneratorParams(KnobParams):
    """Generator knobs. Defaults mirror ``conf/dataset/synthetic.yaml`` (a test keeps them in sync)."""

    rows_train: int = 20_000
    rows_test: int = 10_000
    seed: int = 2024
    # Per-scenario targets for the expected rates, drawn uniformly from these ranges.
    ctr_range: tuple[float, float] = (0.035, 0.055)
    ctcvr_range: tuple[float, float] = (0.0045, 0.0065)
    # Numerical features.
    num_factors: int = 8  # rank of the correlation structure shared by all scenarios
    communality_range: tuple[float, float] = (0.2, 0.7)  # variance share explained by the factors
    num_mean_shift: float = 0.5  # std of each scenario's shift of a latent feature mean
    num_scale_shift: float = 0.2  # std of each scenario's log-scale change of a latent feature
    zero_fraction_max: float = 0.2  # P(feature == 0) per scenario and feature ~ U(0, max)
    # Categorical ids.
    vocab_range: tuple[int, int] = (3, 5_000)  # id space per field, log-uniform, shared
    site_code_max: int = 100  # categorical_1 = one constant code per scenario in [1, max]
    id_window: float = 0.6  # fraction of a field's id space one scenario uses
    zipf_range: tuple[float, float] = (0.9, 1.3)  # per-scenario popularity exponent
    id_shared_fraction: float = 0.5  # variance share of an id effect common to all scenarios
    search_group_mean: float = 8.0  # mean impressions per search_id
    # Std of each part of the click logit.
    click_shared: float = 1.0
    click_scenario: float = 0.5
    click_interactions: float = 0.3
    click_ids: float = 0.5
    num_interactions: int = 8  # shared pairwise products in the click logit
    # Std of each part of the conversion-given-click logit.
    conv_shared: float = 0.4  # along the shared click direction
    conv_task: float = 0.8  # conversion-only weights, same in all scenarios
    conv_scenario: float = 0.3
    conv_ids: float = 0.3
    float_decimals: int = 6  # numericals are written with this many decimals

    def __post_init__(self) -> None:
        if self.rows_train < 1 or self.rows_test < 1:
            raise ValueError("generator: rows_train and rows_test must be >= 1")
        if not (0 < self.ctcvr_range[1] < self.ctr_range[0] and self.ctr_range[1] < 1):
            raise ValueError("generator: need 0 < ctcvr_range < ctr_range < 1")
        if not 0 < self.id_window <= 1:
            raise ValueError("generator: id_window must be in (0, 1]")
        if self.vocab_range[0] < 2:
            raise ValueError("generator: vocab_range must start at >= 2")
        if self.communality_range[1] > 1:
            raise ValueError("generator: communality_range must lie in [0, 1]")
        for name in ("zero_fraction_max", "id_shared_fraction"):
            if getattr(self, name) > 1:
                raise ValueError(f"generator: {name} must be in [0, 1]")
        if self.num_factors < 1 or self.site_code_max < 1:
            raise ValueError("generator: num_factors and site_code_max must be >= 1")
        if self.search_group_mean < 1:
            raise ValueError("generator: search_group_mean must be >= 1 (impressions per search_id)")


@dataclass(frozen=True)
class _Shared:
    """Structure common to all scenarios (drawn from the seed only)."""

    loadings: np.ndarray  # [Dn, K]
    uniqueness: np.ndarray  # [Dn] std of the feature-specific noise
    cov: np.ndarray  # [Dn, Dn] latent correlation before any scenario shift
    w_shared: np.ndarray  # [Dn] unit-variance click/conversion direction
    w_conv: np.ndarray  # [Dn] unit-variance conversion-only direction
    pairs: np.ndarray  # [P, 2] feature indices of the interactions
    pair_signs: np.ndarray  # [P]
    vocab: np.ndarray  # [F] id space size per categorical field
    field_weight_click: np.ndarray  # [F] sums of squares = 1 (field 1 gets 0)
    field_weight_conv: np.ndarray
    id_effect_click: list[np.ndarray]  # per field, [vocab]
    id_effect_conv: list[np.ndarray]


@dataclass(frozen=True)
class ScenarioArrays:
    """One scenario's generated rows (train rows first, then test rows)."""

    scenario: str
    columns: dict[str, np.ndarray]  # keyed by COLUMNS, in that order
    rows_train: int
    targets: dict[str, float]  # the calibrated expected rates
    probabilities: dict[str, np.ndarray]  # true P(task) per row, for oracle AUCs in meta.json

    def part(
        self, which: str, arrays: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Rows of ``which`` ("train" | "test") of ``columns`` (or of ``arrays``)."""
        sl = slice(0, self.rows_train) if which == "train" else slice(self.rows_train, None)
        return {k: v[sl] for k, v in (self.columns if arrays is None else arrays).items()}


def scenario_key(scenario: str) -> int:
    """Stable 32-bit key of a scenario name (Python's hash() is salted per process)."""
    return zlib.crc32(scenario.encode("utf-8"))


def simulate_scenario(scenario: str, params: GeneratorParams) -> ScenarioArrays:
    """Generate all rows of one scenario, deterministic in ``(params, scenario)``."""
    shared = _shared_structure(params)
    rng = np.random.default_rng([params.seed, _SCENARIO_STREAM, scenario_key(scenario)])
    n = params.rows_train + params.rows_test
    dn, nf = NUM_NUMERICAL, NUM_CATEGORICAL

    # Per-scenario parameters, always drawn in this order.
    ctr = rng.uniform(*params.ctr_range)
    ctcvr = rng.uniform(*params.ctcvr_range)
    mean_shift = rng.normal(0.0, params.num_mean_shift, dn)
    scale = np.exp(rng.normal(0.0, params.num_scale_shift, dn))
    zero_prob = rng.uniform(0.0, params.zero_fraction_max, dn)
    w_click_s = _unit_direction(rng.normal(size=dn), shared.cov)
    w_conv_s = _unit_direction(rng.normal(size=dn), shared.cov)
    site_code = int(rng.integers(1, params.site_code_max + 1))

    # Numerical features: u is the latent value the labels see (0 where missing).
    factors = rng.normal(size=(n, params.num_factors))
    noise = rng.normal(size=(n, dn))
    latent = factors @ shared.loadings.T + noise * shared.uniqueness
    z = mean_shift + scale * latent
    present = rng.random((n, dn)) >= zero_prob
    u = np.where(present, z, 0.0)
    x_num = np.where(present, 1.0 / (1.0 + np.exp(-z)), 0.0)

    # Categorical ids and their label effects.
    x_cat = np.empty((n, nf), dtype=np.int64)
    x_cat[:, 0] = site_code
    id_click = np.zeros(n)
    id_conv = np.zeros(n)
    rho = params.id_shared_fraction
    for f in range(1, nf):
        ids = _sample_ids(rng, int(shared.vocab[f]), n, params)
        x_cat[:, f] = ids
        local_click = rng.normal(size=int(shared.vocab[f]))
        local_conv = rng.normal(size=int(shared.vocab[f]))
        eff_click = np.sqrt(rho) * shared.id_effect_click[f] + np.sqrt(1 - rho) * local_click
        eff_conv = np.sqrt(rho) * shared.id_effect_conv[f] + np.sqrt(1 - rho) * local_conv
        id_click += shared.field_weight_click[f] * eff_click[ids]
        id_conv += shared.field_weight_conv[f] * eff_conv[ids]

    # Label logits (without bias), each part scaled to its configured std.
    shared_part = u @ shared.w_shared
    inter = (u[:, shared.pairs[:, 0]] * u[:, shared.pairs[:, 1]]) @ shared.pair_signs
    inter /= np.sqrt(len(shared.pair_signs))
    click_logit = (
        params.click_shared * shared_part
        + params.click_scenario * (u @ w_click_s)
        + params.click_interactions * inter
        + params.click_ids * id_click
    )
    conv_logit = (
        params.conv_shared * shared_part
        + params.conv_task * (u @ shared.w_conv)
        + params.conv_scenario * (u @ w_conv_s)
        + params.conv_ids * id_conv
    )
    p_click = _sigmoid(click_logit + _calibrate(click_logit, ctr))
    p_conv = _sigmoid(conv_logit + _calibrate(conv_logit, ctcvr, weight=p_click))
    click = rng.random(n) < p_click
    conversion = click & (rng.random(n) < p_conv)

    new_search = rng.random(n) < 1.0 / params.search_group_mean
    new_search[0] = True
    search_id = np.cumsum(new_search) - 1 + int(rng.integers(0, _SEARCH_ID_BASE_MAX))

    columns: dict[str, np.ndarray] = {ID_COLUMN: search_id}
    columns.update({name: x_cat[:, i] for i, name in enumerate(CATEGORICAL)})
    columns.update({name: x_num[:, i] for i, name in enumerate(NUMERICAL)})
    columns["click"] = click.astype(np.int64)
    columns["conversion"] = conversion.astype(np.int64)
    return ScenarioArrays(
        scenario=scenario,
        columns=columns,
        rows_train=params.rows_train,
        targets={"ctr": float(ctr), "ctcvr": float(ctcvr)},
        probabilities={"click": p_click, "conversion": p_click * p_conv},
    )


def _shared_structure(params: GeneratorParams) -> _Shared:
    rng = np.random.default_rng([params.seed, _SHARED_STREAM])
    dn, nf, k = NUM_NUMERICAL, NUM_CATEGORICAL, params.num_factors
    loadings = rng.normal(size=(dn, k))
    communality = rng.uniform(*params.communality_range, dn)
    loadings *= np.sqrt(communality / (loadings**2).sum(axis=1))[:, None]
    uniqueness = np.sqrt(1.0 - communality)
    cov = loadings @ loadings.T + np.diag(uniqueness**2)
    w_shared = _unit_direction(rng.normal(size=dn), cov)
    w_conv = _unit_direction(rng.normal(size=dn), cov)
    pairs = np.stack(
        [rng.choice(dn, size=2, replace=False) for _ in range(params.num_interactions)]
    ).reshape(-1, 2)
    pair_signs = rng.choice([-1.0, 1.0], size=params.num_interactions)
    lo, hi = params.vocab_range
    vocab = np.exp(rng.uniform(np.log(lo), np.log(hi), nf)).round().astype(np.int64)
    vocab[0] = params.site_code_max + 1

    def field_weights() -> np.ndarray:
        w = rng.uniform(*_FIELD_WEIGHT_RANGE, nf)
        w[0] = 0.0  # the site code is constant inside a scenario
        return w / np.sqrt((w**2).sum())

    fw_click, fw_conv = field_weights(), field_weights()
    eff_click = [rng.normal(size=int(v)) for v in vocab]
    eff_conv = [rng.normal(size=int(v)) for v in vocab]
    return _Shared(
        loadings=loadings,
        uniqueness=uniqueness,
        cov=cov,
        w_shared=w_shared,
        w_conv=w_conv,
        pairs=pairs,
        pair_signs=pair_signs,
        vocab=vocab,
        field_weight_click=fw_click,
        field_weight_conv=fw_conv,
        id_effect_click=eff_click,
        id_effect_conv=eff_conv,
    )


def _unit_direction(w: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Scale ``w`` so that w.latent has unit variance under the shared correlation ``cov``."""
    return w / np.sqrt(w @ cov @ w)


def _sample_ids(
    rng: np.random.Generator, vocab: int, n: int, params: GeneratorParams
) -> np.ndarray:
    """Zipf-popular ids from this scenario's window of the shared id space."""
    width = max(1, int(np.ceil(params.id_window * vocab)))
    offset = int(rng.integers(0, vocab - width + 1))
    exponent = rng.uniform(*params.zipf_range)
    popularity = np.arange(1, width + 1, dtype=np.float64) ** -exponent
    popularity /= popularity.sum()
    id_of_rank = offset + rng.permutation(width)
    return id_of_rank[rng.choice(width, size=n, p=popularity)]


def _calibrate(logit: np.ndarray, target: float, weight: np.ndarray | None = None) -> float:
    """Bias b with mean(weight * sigmoid(logit + b)) == target (bisection; monotone in b)."""
    w = np.ones_like(logit) if weight is None else weight
    lo, hi = -_BISECT_BOUND, _BISECT_BOUND
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        if np.mean(w * _sigmoid(logit + mid)) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))
