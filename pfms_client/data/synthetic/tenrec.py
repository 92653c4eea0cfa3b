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
same scenario in a full run. A scenario's size is its own (``rows_by_scenario``,
see ``params``): everything here works on ``params.for_scenario(scenario)``.

On disk: ``{out}/{scenario}.csv`` (the Tenrec video columns) with a
``{scenario}.meta.json`` sidecar (params, target and measured rates, oracle
AUCs), plus ``{out}/meta.json`` indexing all scenarios present. The test rows
are held out by the Tenrec reader (``dataset.split``), not here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..files import RATE_DIGITS, check_made_with, publish_scenario_stream
from .params import TenrecGeneratorParams
from .progress import Progress
from .stats import AUC_BINS, AUC_EXACT_ROWS, StreamingAUC, calibrate, scenario_key, sigmoid

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

# Rows are simulated and written BLOCK_ROWS at a time, each block from its own random
# stream (see simulate_tenrec_blocks): a fixed part of the data, not a tuning knob,
# above the default 30,000 rows (so those scenarios are byte-identical to the ones
# made before streaming) and small enough to keep one block's memory low.
BLOCK_ROWS = 100_000
_SHARED_STREAM = 10  # rng stream tags, distinct from aliexpress.py's
_SCENARIO_STREAM = 11  # block 0 (and the scenario's own parameters)
_BLOCK_STREAM = 12  # blocks 1, 2, ...


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


@dataclass(frozen=True)
class _Window:
    """A scenario's Zipf-popular window of a shared id space."""

    id_of_rank: np.ndarray  # [width]
    popularity: np.ndarray  # [width] probabilities, decreasing

    @classmethod
    def draw(
        cls, rng: np.random.Generator, space: int, window: float, zipf_range: tuple[float, float]
    ) -> _Window:
        width = max(1, int(np.ceil(window * space)))
        offset = int(rng.integers(0, space - width + 1))
        exponent = rng.uniform(*zipf_range)
        popularity = np.arange(1, width + 1, dtype=np.float64) ** -exponent
        popularity /= popularity.sum()
        return cls(offset + rng.permutation(width), popularity)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.id_of_rank[rng.choice(len(self.popularity), size=n, p=self.popularity)]


@dataclass
class _Scenario:
    """One scenario's own parameters: drawn once, in block 0, then used by every block."""

    rates: dict[str, float]  # click, and like/share/follow given a click
    demo_click: np.ndarray  # [cells, K] the scenario's own taste per (gender, age) cell
    cat_click: np.ndarray  # [categories, K]
    demo_like: np.ndarray
    cat_like: np.ndarray
    user_bias: np.ndarray  # [U]
    item_bias: np.ndarray  # [I]
    users: _Window | None = None
    items: _Window | None = None
    biases: dict[str, float] = field(default_factory=dict)  # calibrated on block 0


def simulate_tenrec_scenario(scenario: str, params: TenrecGeneratorParams) -> TenrecArrays:
    """All rows of one scenario in memory (the blocks of ``simulate_tenrec_blocks``, joined)."""
    params = params.for_scenario(scenario)
    blocks = list(simulate_tenrec_blocks(scenario, params))
    return TenrecArrays(
        scenario=scenario,
        columns={c: np.concatenate([b.columns[c] for b in blocks]) for c in COLUMNS},
        targets=blocks[0].targets,
        probabilities={
            k: np.concatenate([b.probabilities[k] for b in blocks]) for k in ("click", "like")
        },
    )


def simulate_tenrec_blocks(scenario: str, params: TenrecGeneratorParams) -> Iterator[TenrecArrays]:
    """The rows of one scenario, ``BLOCK_ROWS`` at a time; deterministic in ``(params, scenario)``.

    As in the AliExpress-schema generator: block 0 draws from the scenario's
    stream ``(seed, scenario)`` its rows and, in between, the scenario's own
    parameters, in the order of the original whole-array generator, and calibrates
    the label biases on its own logits (so a scenario of up to ``BLOCK_ROWS`` rows
    is the one that generator made); block b >= 1 draws its rows from
    ``(seed, scenario, b)``. The block size is part of the data, hence a constant.
    """
    params = params.for_scenario(scenario)
    shared = _shared_structure(params)
    key = scenario_key(scenario)
    scen: _Scenario | None = None
    for b, start in enumerate(range(0, params.rows, BLOCK_ROWS)):
        n = min(BLOCK_ROWS, params.rows - start)
        if b == 0:
            rng = np.random.default_rng([params.seed, _SCENARIO_STREAM, key])
        else:
            rng = np.random.default_rng([params.seed, _BLOCK_STREAM, key, b])
        block, scen = _simulate_block(rng, n, shared, params, scen)
        yield TenrecArrays(
            scenario=scenario,
            columns=block[0],
            targets={
                k if k == "click" else f"{k}_given_click": float(v) for k, v in scen.rates.items()
            },
            probabilities=block[1],
        )


def _simulate_block(
    rng: np.random.Generator,
    n: int,
    shared: _Shared,
    params: TenrecGeneratorParams,
    scen: _Scenario | None,
) -> tuple[tuple[dict[str, np.ndarray], dict[str, np.ndarray]], _Scenario]:
    """``n`` rows; with ``scen`` None (block 0) the scenario's parameters are drawn too."""
    k = params.latent_dim
    cells = params.num_genders * params.num_ages
    first = scen is None
    if scen is None:  # per-scenario parameters, always drawn in this order
        rates = {
            "click": rng.uniform(*params.click_rate_range),
            "like": rng.uniform(*params.like_rate_range),
            "share": rng.uniform(*params.share_rate_range),
            "follow": rng.uniform(*params.follow_rate_range),
        }
        demo_click = rng.normal(size=(cells, k))
        cat_click = rng.normal(size=(params.num_categories, k))
        demo_like = rng.normal(size=(cells, k))
        cat_like = rng.normal(size=(params.num_categories, k))
        rho = params.id_shared_fraction
        user_bias = np.sqrt(rho) * shared.user_bias + np.sqrt(1 - rho) * rng.normal(
            size=params.num_users
        )
        item_bias = np.sqrt(rho) * shared.item_bias + np.sqrt(1 - rho) * rng.normal(
            size=params.num_items
        )
        scen = _Scenario(rates, demo_click, cat_click, demo_like, cat_like, user_bias, item_bias)
        scen.users = _Window.draw(rng, params.num_users, params.user_window, params.user_zipf_range)
    assert scen.users is not None
    users = scen.users.sample(rng, n)
    if first:
        scen.items = _Window.draw(rng, params.num_items, params.item_window, params.item_zipf_range)
    assert scen.items is not None
    items = scen.items.sample(rng, n)

    cell = shared.user_gender[users] * params.num_ages + shared.user_age[users]
    category = shared.item_category[items]
    scale = 1.0 / np.sqrt(k)  # a dot product of K unit-variance pairs has variance K
    affinity = _rowdot(shared.user_factor[users], shared.item_factor[items]) * scale
    like_affinity = _rowdot(shared.user_like_factor[users], shared.item_like_factor[items]) * scale
    scen_click = _rowdot(scen.demo_click[cell], scen.cat_click[category]) * scale
    scen_like = _rowdot(scen.demo_like[cell], scen.cat_like[category]) * scale

    click_logit = (
        params.click_affinity * affinity
        + params.click_scenario * scen_click
        + params.click_user * scen.user_bias[users]
        + params.click_item * scen.item_bias[items]
    )
    logits = {
        "like": (
            params.like_click * affinity
            + params.like_task * like_affinity
            + params.like_scenario * scen_like
            + params.like_user * shared.user_like[users]
        ),
        "share": params.share_click * affinity + params.share_user * shared.user_share[users],
        "follow": (
            params.follow_user * shared.user_follow[users]
            + params.follow_item * shared.item_follow[items]
        ),
    }
    if first:
        scen.biases["click"] = calibrate(click_logit, scen.rates["click"])
    p_click = sigmoid(click_logit + scen.biases["click"])
    if first:
        # P(label | click) with E[P(click) P(label | click)] / E[P(click)] == rate
        mean_click = float(p_click.mean())
        for label, logit in logits.items():
            target = scen.rates[label] * mean_click
            scen.biases[label] = calibrate(logit, target, weight=p_click)
    p = {label: sigmoid(logit + scen.biases[label]) for label, logit in logits.items()}
    click = rng.random(n) < p_click
    like = click & (rng.random(n) < p["like"])
    share = click & (rng.random(n) < p["share"])
    follow = click & (rng.random(n) < p["follow"])
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
    columns = {c: values[c].astype(np.int64) for c in COLUMNS}
    return (columns, {"click": p_click, "like": p_click * p["like"]}), scen


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


# --- writing: one CSV + meta sidecar per scenario, published atomically ---------------------
DEFAULT_FILE = "{scenario}.csv"


def generate_tenrec(
    out_dir: str | os.PathLike[str], scenarios: Sequence[str], **knobs: Any
) -> dict[str, dict[str, Any]]:
    """Generate (or regenerate) ``{out_dir}/{scenario}.csv`` for each scenario; returns the metas."""
    params = TenrecGeneratorParams.from_dict(knobs, scenarios=scenarios)
    return {
        s: write_tenrec_scenario(Path(out_dir) / DEFAULT_FILE.format(scenario=s), s, params)
        for s in scenarios
    }


def write_tenrec_scenario(path: Path, scenario: str, params: TenrecGeneratorParams) -> dict[str, Any]:
    """Simulate one scenario block by block, appending to a temp CSV; publish CSV and meta atomically.

    Memory is bounded by one block (``BLOCK_ROWS`` rows) whatever ``rows`` is.
    """
    params = params.for_scenario(scenario)
    stats = _ScenarioStats(scenario, params, path.name)
    progress = Progress(scenario, params.rows)

    def blocks() -> Iterator[list[np.ndarray]]:
        for block in simulate_tenrec_blocks(scenario, params):
            stats.add(block)
            yield [block.columns[c] for c in COLUMNS]
            progress.advance(len(block.columns["click"]))

    meta = publish_scenario_stream(
        path, COLUMNS, [None] * len(COLUMNS), blocks(), stats.meta, scenario
    )
    progress.done()
    return meta


def ensure_tenrec_generated(settings: DatasetSettings, scenarios: Sequence[str]) -> None:
    """Generate the scenarios whose files are missing; an existing file must match the knobs."""
    if settings.generator is None:
        return
    if "{scenario}" not in str(settings.scenario_file):
        raise ValueError("dataset.generator needs a scenario_file containing '{scenario}'")
    params = TenrecGeneratorParams.from_dict(
        settings.generator, where="dataset.generator", scenarios=settings.scenarios
    )
    for scenario in scenarios:
        settings.check_scenario(scenario)
        path = settings.scenario_path(scenario)
        if not path.is_file():
            write_tenrec_scenario(path, scenario, params)
        check_made_with(
            path,
            params.for_scenario(scenario).to_dict(),
            f"delete {path} to regenerate, or point dataset.root elsewhere",
        )


class _ScenarioStats:
    """What the meta sidecar reports, accumulated block by block: rates, id counts, oracle AUCs."""

    def __init__(self, scenario: str, params: TenrecGeneratorParams, file_name: str) -> None:
        self.scenario, self.params, self.file_name = scenario, params, file_name
        self.targets: dict[str, float] = {}
        self.positives = dict.fromkeys(LABELS, 0)
        self.users_seen = np.zeros(params.num_users, dtype=bool)
        self.items_seen = np.zeros(params.num_items, dtype=bool)
        self.auc = {task: StreamingAUC(AUC_EXACT_ROWS, AUC_BINS) for task in ("click", "like")}

    def add(self, block: TenrecArrays) -> None:
        cols = block.columns
        self.targets = block.targets
        for label in LABELS:
            self.positives[label] += int(cols[label].sum())
        self.users_seen[cols["user_id"]] = True
        self.items_seen[cols["item_id"]] = True
        for task, auc in self.auc.items():
            auc.add(cols[task], block.probabilities[task])

    def meta(self) -> dict[str, Any]:
        rows, clicks = self.params.rows, self.positives["click"]
        rates = {label: round(self.positives[label] / rows, RATE_DIGITS) for label in LABELS}
        given_click = {  # like, share and follow happen only on clicks
            f"{label}_given_click": round(self.positives[label] / clicks, RATE_DIGITS)
            if clicks
            else None
            for label in LABELS
            if label != "click"
        }
        meta: dict[str, Any] = {
            "scenario": self.scenario,
            "params": self.params.to_dict(),
            "file": self.file_name,
            "rows": rows,
            "users": int(self.users_seen.sum()),
            "items": int(self.items_seen.sum()),
            "targets": {k: round(v, RATE_DIGITS) for k, v in self.targets.items()},
            "rates": {**rates, **given_click},
            "oracle_auc": {task: auc.value() for task, auc in self.auc.items()},
        }
        if not all(auc.exact for auc in self.auc.values()):  # only above AUC_EXACT_ROWS rows
            meta["oracle_auc_max_error"] = {
                task: float(f"{auc.error_bound():.2g}") for task, auc in self.auc.items()
            }
        return meta
