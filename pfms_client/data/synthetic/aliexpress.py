"""Synthetic AliExpress-schema scenarios with known shift and known label structure.

``simulate_scenario`` is pure numpy and writes nothing; the second half of this
module writes scenarios to disk (``generate``, ``write_scenario``,
``ensure_aliexpress_generated``). What the data is made of:

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

On disk: ``{out}/{scenario}/train.csv``, ``test.csv`` and ``meta.json`` (params,
target and measured rates, oracle AUCs), plus ``{out}/meta.json`` indexing all
scenarios present. A scenario folder is built in a temp dir and renamed into
place (``pfms_client.data.files``), so readers never see a half-written folder,
and four Flower clients can generate their own scenarios at the same time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..csv_writer import write_csv
from ..errors import DataValidationError
from ..files import META_FILE, RATE_DIGITS, staged_folder, update_index, write_json
from .params import GeneratorParams
from .stats import calibrate, oracle_auc, scenario_key, sigmoid

if TYPE_CHECKING:
    from ..settings import DatasetSettings

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
_FIELD_WEIGHT_RANGE = (0.2, 1.0)  # relative importance of the id fields (then normalised)
_SEARCH_ID_BASE_MAX = 10**9  # search ids start at a random per-scenario base below this


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
    p_click = sigmoid(click_logit + calibrate(click_logit, ctr))
    p_conv = sigmoid(conv_logit + calibrate(conv_logit, ctcvr, weight=p_click))
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


# --- writing: one folder per scenario, published atomically ----------------------------------
@dataclass(frozen=True)
class OutputNames:
    """Where a scenario's files go inside ``out_dir`` (the ``dataset`` config's names)."""

    scenario_dir: str = "{scenario}"
    train_file: str = "train.csv"
    test_file: str = "test.csv"

    def folder(self, out_dir: Path, scenario: str) -> Path:
        return out_dir / self.scenario_dir.format(scenario=scenario)

    def files(self, scenario: str) -> dict[str, str]:
        """``{"train": name, "test": name}``; names may contain ``{scenario}`` too."""
        return {
            "train": self.train_file.format(scenario=scenario),
            "test": self.test_file.format(scenario=scenario),
        }


_DEFAULTS = GeneratorParams()


def generate(
    out_dir: str | os.PathLike[str],
    scenarios: Sequence[str],
    rows_train: int = _DEFAULTS.rows_train,
    rows_test: int = _DEFAULTS.rows_test,
    seed: int = _DEFAULTS.seed,
    **knobs: Any,
) -> dict[str, dict[str, Any]]:
    """Generate (or regenerate) every scenario; returns each scenario's meta."""
    return {
        s: generate_scenario(out_dir, s, rows_train, rows_test, seed, **knobs) for s in scenarios
    }


def generate_scenario(
    out_dir: str | os.PathLike[str],
    scenario: str,
    rows_train: int = _DEFAULTS.rows_train,
    rows_test: int = _DEFAULTS.rows_test,
    seed: int = _DEFAULTS.seed,
    **knobs: Any,
) -> dict[str, Any]:
    """Generate one scenario alone; byte-identical to the same scenario in a full run."""
    params = GeneratorParams.from_dict(
        {"rows_train": rows_train, "rows_test": rows_test, "seed": seed, **knobs}
    )
    return write_scenario(Path(out_dir), scenario, params, OutputNames(), overwrite=True)


def write_scenario(
    out_dir: Path, scenario: str, params: GeneratorParams, names: OutputNames, overwrite: bool
) -> dict[str, Any]:
    """Simulate, write into a temp dir, rename into place, update the index."""
    arrays = simulate_scenario(scenario, params)
    meta = _scenario_meta(arrays, params, names)
    with staged_folder(names.folder(out_dir, scenario), overwrite) as tmp:
        decimals = [params.float_decimals if c in NUMERICAL else None for c in COLUMNS]
        for part, file_name in names.files(scenario).items():
            cols = arrays.part(part)
            write_csv(tmp / file_name, COLUMNS, [cols[c] for c in COLUMNS], decimals)
        write_json(tmp / META_FILE, meta)
    update_index(out_dir, scenario, meta)
    return meta


def ensure_aliexpress_generated(settings: DatasetSettings, scenarios: Sequence[str]) -> None:
    """Generate the scenarios whose folders are missing; check existing ones.

    An existing folder made with other generator parameters is an error rather
    than silently reused. (``pfms_client.data.ensure_generated`` picks the layout.)
    """
    if "{scenario}" not in str(settings.scenario_dir):
        raise ValueError("dataset.generator needs a scenario_dir containing '{scenario}'")
    params = GeneratorParams.from_dict(settings.generator)
    names = OutputNames(
        str(settings.scenario_dir), str(settings.train_file), str(settings.test_file)
    )
    for scenario in scenarios:
        settings.check_scenario(scenario)
        folder = names.folder(settings.root, scenario)
        if not folder.is_dir():
            write_scenario(settings.root, scenario, params, names, overwrite=False)
        _check_existing(folder, params)


def _scenario_meta(
    arrays: ScenarioArrays, params: GeneratorParams, names: OutputNames
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "scenario": arrays.scenario,
        "params": params.to_dict(),
        "files": names.files(arrays.scenario),
        "rows": {"train": params.rows_train, "test": params.rows_test},
        "targets": {k: round(v, RATE_DIGITS) for k, v in arrays.targets.items()},
    }
    for part in ("train", "test"):
        cols = arrays.part(part)
        click, conv = cols["click"], cols["conversion"]
        meta[part] = {
            "clicks": int(click.sum()),
            "conversions": int(conv.sum()),
            "ctr": round(float(click.mean()), RATE_DIGITS),
            "ctcvr": round(float(conv.mean()), RATE_DIGITS),
        }
    test_cols = arrays.part("test")
    test_p = arrays.part("test", arrays.probabilities)
    meta["oracle_auc_test"] = {
        "ctr": oracle_auc(test_cols["click"], test_p["click"]),
        "ctcvr": oracle_auc(test_cols["conversion"], test_p["conversion"]),
    }
    return meta


def _check_existing(folder: Path, params: GeneratorParams) -> None:
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise DataValidationError(
            meta_path, "scenario folder exists but was not made by the generator (no meta.json)"
        )
    found = json.loads(meta_path.read_text()).get("params", {})
    wanted = params.to_dict()
    diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
    if diff:
        details = ", ".join(
            f"{k}: {found.get(k)!r} on disk vs {wanted.get(k)!r} configured" for k in diff
        )
        raise DataValidationError(
            meta_path,
            f"generated with other parameters ({details}); delete {folder} to regenerate, "
            "or point dataset.root elsewhere",
        )
