"""Synthetic Tenrec-schema scenarios: shared user/item structure, scenario-specific shifts.

``simulate_tenrec_scenario`` is pure numpy and writes nothing; the second half of
this module writes scenarios to disk (``generate_tenrec``, ``write_tenrec_scenario``,
``ensure_tenrec_generated``). What the data is made of:

* Users and items come from id spaces shared by all scenarios; a scenario sees
  a window of each (windows partly overlap) with a Zipf popularity of its own.
  A user has a fixed gender and age group, an item a fixed video category.
* Latent factors are shared by all scenarios: a user's factor is partly its
  (gender, age) cell's factor, an item's partly its category's factor, so the
  demographic x category part of a preference is visible through the small
  categorical fields every scenario has, which is what another scenario can teach.
* ``click`` logit = shared affinity (user . item factors) + a scenario's own
  (gender, age) x category affinity + user and item biases (part shared, part
  local). ``like`` given a click = part of the click affinity + a like-only
  affinity (same in all scenarios) + a scenario term + a user like propensity.
  ``share`` and ``follow`` exist only on clicks too. Each scenario draws its own
  click rate and like/share/follow-given-click rates; biases are calibrated to hit them.

Randomness: shared structure from ``seed`` alone, a scenario's from
``(seed, crc32(scenario name))``, so one scenario generated alone equals the
same scenario in a full run.

On disk: ``{out}/{scenario}.csv`` (the Tenrec video columns) with a
``{scenario}.meta.json`` sidecar (params, target and measured rates, oracle
AUCs), plus ``{out}/meta.json`` indexing all scenarios present. The test rows
are held out by the Tenrec reader (``dataset.split``), not here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..files import RATE_DIGITS, check_made_with, publish_scenario_file
from .params import TenrecGeneratorParams
from .stats import calibrate, oracle_auc, scenario_key, sigmoid

if TYPE_CHECKING:
    from ..settings import DatasetSettings

# The Tenrec QK-video / QB-video column order.
COLUMNS = (
    "user_id",
    "item_id",
    "click",
    "follow",
    "like",
    "share",
    "video_category",
    "watching_times",
    "gender",
    "age",
)
LABELS = ("click", "follow", "like", "share")

_SHARED_STREAM = 10  # rng stream tags, distinct from aliexpress.py's
_SCENARIO_STREAM = 11


@dataclass(frozen=True)
class TenrecArrays:
    """One scenario's generated rows, plus what the generator knows about them."""

    scenario: str
    columns: dict[str, np.ndarray]  # keyed by COLUMNS, in that order
    targets: dict[str, float]  # calibrated expected rates: click, {like,share,follow}_given_click
    probabilities: dict[str, np.ndarray]  # true P(click), P(click and like) per row


@dataclass(frozen=True)
class _Shared:
    """Structure common to all scenarios (drawn from the seed only)."""

    user_gender: np.ndarray  # [U]
    user_age: np.ndarray  # [U]
    item_category: np.ndarray  # [I]
    user_factor: np.ndarray  # [U, K] unit-variance entries
    item_factor: np.ndarray  # [I, K]
    user_like_factor: np.ndarray  # [U, K]
    item_like_factor: np.ndarray  # [I, K]
    user_bias: np.ndarray  # [U] click
    item_bias: np.ndarray  # [I] click
    user_like: np.ndarray  # [U]
    user_share: np.ndarray  # [U]
    user_follow: np.ndarray  # [U]
    item_follow: np.ndarray  # [I]


def simulate_tenrec_scenario(scenario: str, params: TenrecGeneratorParams) -> TenrecArrays:
    """Generate all rows of one scenario, deterministic in ``(params, scenario)``."""
    shared = _shared_structure(params)
    rng = np.random.default_rng([params.seed, _SCENARIO_STREAM, scenario_key(scenario)])
    n, k = params.rows, params.latent_dim
    cells = params.num_genders * params.num_ages

    # Per-scenario parameters, always drawn in this order.
    rates = {
        "click": rng.uniform(*params.click_rate_range),
        "like": rng.uniform(*params.like_rate_range),
        "share": rng.uniform(*params.share_rate_range),
        "follow": rng.uniform(*params.follow_rate_range),
    }
    demo_click = rng.normal(size=(cells, k))  # the scenario's own taste per (gender, age) cell
    cat_click = rng.normal(size=(params.num_categories, k))
    demo_like = rng.normal(size=(cells, k))
    cat_like = rng.normal(size=(params.num_categories, k))
    rho = params.id_shared_fraction
    user_bias = np.sqrt(rho) * shared.user_bias + np.sqrt(1 - rho) * rng.normal(size=params.num_users)
    item_bias = np.sqrt(rho) * shared.item_bias + np.sqrt(1 - rho) * rng.normal(size=params.num_items)
    users = _sample_window(rng, params.num_users, params.user_window, params.user_zipf_range, n)
    items = _sample_window(rng, params.num_items, params.item_window, params.item_zipf_range, n)

    cell = shared.user_gender[users] * params.num_ages + shared.user_age[users]
    category = shared.item_category[items]
    scale = 1.0 / np.sqrt(k)  # a dot product of K unit-variance pairs has variance K
    affinity = _rowdot(shared.user_factor[users], shared.item_factor[items]) * scale
    like_affinity = _rowdot(shared.user_like_factor[users], shared.item_like_factor[items]) * scale
    scen_click = _rowdot(demo_click[cell], cat_click[category]) * scale
    scen_like = _rowdot(demo_like[cell], cat_like[category]) * scale

    click_logit = (
        params.click_affinity * affinity
        + params.click_scenario * scen_click
        + params.click_user * user_bias[users]
        + params.click_item * item_bias[items]
    )
    like_logit = (
        params.like_click * affinity
        + params.like_task * like_affinity
        + params.like_scenario * scen_like
        + params.like_user * shared.user_like[users]
    )
    share_logit = params.share_click * affinity + params.share_user * shared.user_share[users]
    follow_logit = (
        params.follow_user * shared.user_follow[users]
        + params.follow_item * shared.item_follow[items]
    )
    p_click = sigmoid(click_logit + calibrate(click_logit, rates["click"]))
    mean_click = float(p_click.mean())

    def given_click(logit: np.ndarray, rate: float) -> np.ndarray:
        """P(label | click) with E[P(click) P(label | click)] / E[P(click)] == rate."""
        return sigmoid(logit + calibrate(logit, rate * mean_click, weight=p_click))

    p_like = given_click(like_logit, rates["like"])
    p_share = given_click(share_logit, rates["share"])
    p_follow = given_click(follow_logit, rates["follow"])
    click = rng.random(n) < p_click
    like = click & (rng.random(n) < p_like)
    share = click & (rng.random(n) < p_share)
    follow = click & (rng.random(n) < p_follow)
    watch_mean = params.watch_extra_mean * 2.0 * sigmoid(affinity)  # mean ~ watch_extra_mean
    watching = np.where(click, 1 + rng.poisson(watch_mean), 0)

    values = {
        "user_id": users,
        "item_id": items,
        "click": click,
        "follow": follow,
        "like": like,
        "share": share,
        "video_category": category,
        "watching_times": watching,
        "gender": shared.user_gender[users],
        "age": shared.user_age[users],
    }
    return TenrecArrays(
        scenario=scenario,
        columns={c: values[c].astype(np.int64) for c in COLUMNS},
        targets={k if k == "click" else f"{k}_given_click": float(v) for k, v in rates.items()},
        probabilities={"click": p_click, "like": p_click * p_like},
    )


def _shared_structure(params: TenrecGeneratorParams) -> _Shared:
    rng = np.random.default_rng([params.seed, _SHARED_STREAM])
    u, i, k = params.num_users, params.num_items, params.latent_dim
    cells = params.num_genders * params.num_ages
    gender_p = rng.dirichlet(np.ones(params.num_genders))
    age_p = rng.dirichlet(np.ones(params.num_ages))
    category_p = rng.dirichlet(np.ones(params.num_categories))
    user_gender = rng.choice(params.num_genders, size=u, p=gender_p)
    user_age = rng.choice(params.num_ages, size=u, p=age_p)
    item_category = rng.choice(params.num_categories, size=i, p=category_p)
    user_cell = user_gender * params.num_ages + user_age

    def factors(group_factor: np.ndarray, group: np.ndarray, share: float) -> np.ndarray:
        own = rng.normal(size=(len(group), k))
        return np.sqrt(share) * group_factor[group] + np.sqrt(1 - share) * own

    demo, cat = rng.normal(size=(cells, k)), rng.normal(size=(params.num_categories, k))
    user_factor = factors(demo, user_cell, params.demographic_share)
    item_factor = factors(cat, item_category, params.category_share)
    demo_l, cat_l = rng.normal(size=(cells, k)), rng.normal(size=(params.num_categories, k))
    user_like_factor = factors(demo_l, user_cell, params.demographic_share)
    item_like_factor = factors(cat_l, item_category, params.category_share)
    return _Shared(
        user_gender=user_gender,
        user_age=user_age,
        item_category=item_category,
        user_factor=user_factor,
        item_factor=item_factor,
        user_like_factor=user_like_factor,
        item_like_factor=item_like_factor,
        user_bias=rng.normal(size=u),
        item_bias=rng.normal(size=i),
        user_like=rng.normal(size=u),
        user_share=rng.normal(size=u),
        user_follow=rng.normal(size=u),
        item_follow=rng.normal(size=i),
    )


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("nk,nk->n", a, b)


def _sample_window(
    rng: np.random.Generator,
    space: int,
    window: float,
    zipf_range: tuple[float, float],
    n: int,
) -> np.ndarray:
    """Zipf-popular ids from this scenario's window of a shared id space."""
    width = max(1, int(np.ceil(window * space)))
    offset = int(rng.integers(0, space - width + 1))
    exponent = rng.uniform(*zipf_range)
    popularity = np.arange(1, width + 1, dtype=np.float64) ** -exponent
    popularity /= popularity.sum()
    id_of_rank = offset + rng.permutation(width)
    return id_of_rank[rng.choice(width, size=n, p=popularity)]


# --- writing: one CSV + meta sidecar per scenario, published atomically ---------------------
DEFAULT_FILE = "{scenario}.csv"


def generate_tenrec(
    out_dir: str | os.PathLike[str], scenarios: Sequence[str], **knobs: Any
) -> dict[str, dict[str, Any]]:
    """Generate (or regenerate) ``{out_dir}/{scenario}.csv`` for each scenario; returns the metas."""
    params = TenrecGeneratorParams.from_dict(knobs)
    return {
        s: write_tenrec_scenario(Path(out_dir) / DEFAULT_FILE.format(scenario=s), s, params)
        for s in scenarios
    }


def write_tenrec_scenario(path: Path, scenario: str, params: TenrecGeneratorParams) -> dict[str, Any]:
    """Simulate one scenario and publish its CSV and meta atomically."""
    arrays = simulate_tenrec_scenario(scenario, params)
    meta = _scenario_meta(arrays, params, path.name)
    publish_scenario_file(
        path,
        COLUMNS,
        [arrays.columns[c] for c in COLUMNS],
        [None] * len(COLUMNS),
        meta,
        scenario,
    )
    return meta


def ensure_tenrec_generated(settings: DatasetSettings, scenarios: Sequence[str]) -> None:
    """Generate the scenarios whose files are missing; an existing file must match the knobs."""
    if settings.generator is None:
        return
    if "{scenario}" not in str(settings.scenario_file):
        raise ValueError("dataset.generator needs a scenario_file containing '{scenario}'")
    params = TenrecGeneratorParams.from_dict(settings.generator)
    for scenario in scenarios:
        settings.check_scenario(scenario)
        path = settings.scenario_path(scenario)
        if not path.is_file():
            write_tenrec_scenario(path, scenario, params)
        check_made_with(
            path,
            params.to_dict(),
            f"delete {path} to regenerate, or point dataset.root elsewhere",
        )


def _scenario_meta(
    arrays: TenrecArrays, params: TenrecGeneratorParams, file_name: str
) -> dict[str, Any]:
    cols = arrays.columns
    clicks = cols["click"] == 1
    rates = {label: round(float(cols[label].mean()), RATE_DIGITS) for label in LABELS}
    given_click = {
        f"{label}_given_click": round(float(cols[label][clicks].mean()), RATE_DIGITS)
        if clicks.any()
        else None
        for label in LABELS
        if label != "click"
    }
    return {
        "scenario": arrays.scenario,
        "params": params.to_dict(),
        "file": file_name,
        "rows": params.rows,
        "users": int(np.unique(cols["user_id"]).size),
        "items": int(np.unique(cols["item_id"]).size),
        "targets": {k: round(v, RATE_DIGITS) for k, v in arrays.targets.items()},
        "rates": {**rates, **given_click},
        "oracle_auc": {
            "click": oracle_auc(cols["click"], arrays.probabilities["click"]),
            "like": oracle_auc(cols["like"], arrays.probabilities["like"]),
        },
    }
