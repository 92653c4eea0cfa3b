"""Synthetic Tenrec-schema scenarios: shared user/item structure, scenario-specific shifts.

Pure numpy, no files (see ``generator_tenrec.py`` for writing). What the data is made of:

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .synthetic import KnobParams, _calibrate, _sigmoid, scenario_key

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

_SHARED_STREAM = 10  # rng stream tags, distinct from synthetic.py's
_SCENARIO_STREAM = 11


@dataclass(frozen=True)
class TenrecGeneratorParams(KnobParams):
    """Generator knobs; defaults mirror ``conf/dataset/synthetic_tenrec.yaml`` (a test checks)."""

    rows: int = 30_000  # per scenario; the reader holds out the test rows
    seed: int = 2024
    # Users and items (id spaces shared by all scenarios).
    num_users: int = 8_000
    num_items: int = 4_000
    user_window: float = 0.5  # fraction of the user id space one scenario sees
    item_window: float = 0.6
    user_zipf_range: tuple[float, float] = (0.3, 0.6)  # per-scenario activity skew
    item_zipf_range: tuple[float, float] = (0.8, 1.1)  # per-scenario item popularity skew
    num_categories: int = 20
    num_genders: int = 3
    num_ages: int = 8
    latent_dim: int = 8
    demographic_share: float = 0.7  # variance share of a user factor set by (gender, age)
    category_share: float = 0.7  # variance share of an item factor set by its category
    id_shared_fraction: float = 0.6  # variance share of a user/item bias common to all scenarios
    # Per-scenario rates, drawn uniformly from these ranges (like/share/follow: given a click).
    click_rate_range: tuple[float, float] = (0.15, 0.35)
    like_rate_range: tuple[float, float] = (0.04, 0.12)
    share_rate_range: tuple[float, float] = (0.005, 0.02)
    follow_rate_range: tuple[float, float] = (0.003, 0.012)
    # Std of each part of the click logit.
    click_affinity: float = 1.0  # shared user . item factors
    click_scenario: float = 0.5  # the scenario's own (gender, age) x category affinity
    click_user: float = 0.5
    click_item: float = 0.7
    # Std of each part of the like-given-click logit.
    like_click: float = 0.5  # along the shared click affinity
    like_task: float = 0.8  # like-only affinity, same in every scenario
    like_scenario: float = 0.4
    like_user: float = 0.6  # a user's propensity to like, same in every scenario
    # Std of each part of the share / follow given click logits.
    share_click: float = 0.6
    share_user: float = 0.6
    follow_user: float = 0.8
    follow_item: float = 0.6  # a creator effect
    watch_extra_mean: float = 1.5  # watching_times = 1 + Poisson(about this) on a click, else 0

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError("generator: rows must be >= 1")
        for name in ("num_users", "num_items", "num_categories", "num_genders", "num_ages"):
            if getattr(self, name) < 1:
                raise ValueError(f"generator: {name} must be >= 1")
        if self.latent_dim < 1:
            raise ValueError("generator: latent_dim must be >= 1")
        for name in ("user_window", "item_window"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"generator: {name} must be in (0, 1]")
        for name in ("demographic_share", "category_share", "id_shared_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"generator: {name} must be in [0, 1]")
        for name in ("click_rate_range", "like_rate_range", "share_rate_range", "follow_rate_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi < 1:
                raise ValueError(f"generator: {name} must satisfy 0 < low <= high < 1")


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
    p_click = _sigmoid(click_logit + _calibrate(click_logit, rates["click"]))
    mean_click = float(p_click.mean())

    def given_click(logit: np.ndarray, rate: float) -> np.ndarray:
        """P(label | click) with E[P(click) P(label | click)] / E[P(click)] == rate."""
        return _sigmoid(logit + _calibrate(logit, rate * mean_click, weight=p_click))

    p_like = given_click(like_logit, rates["like"])
    p_share = given_click(share_logit, rates["share"])
    p_follow = given_click(follow_logit, rates["follow"])
    click = rng.random(n) < p_click
    like = click & (rng.random(n) < p_like)
    share = click & (rng.random(n) < p_share)
    follow = click & (rng.random(n) < p_follow)
    watch_mean = params.watch_extra_mean * 2.0 * _sigmoid(affinity)  # mean ~ watch_extra_mean
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
