"""The knobs of the two synthetic generators: the schema of the ``dataset.generator`` node.

``GeneratorParams`` (AliExpress schema, ``aliexpress.py``) and
``TenrecGeneratorParams`` (Tenrec schema, ``tenrec.py``) are frozen dataclasses;
``KnobParams`` turns a config node into one (an unknown knob or a value of the
wrong type is an error naming ``where.knob``) and back. They live apart from the
generators so that reading a config (``DatasetSettings``, the config check)
needs the knobs' names and types, not the code that makes the data.

Per-scenario sizes: ``rows_train_by_scenario`` (AliExpress schema) and
``rows_by_scenario`` (Tenrec schema) map a scenario name to its own row count;
a scenario not named keeps ``rows_train`` / ``rows``. ``for_scenario`` turns
the knobs into that one scenario's plain knobs (its count in ``rows_train`` /
``rows``, no map), which is what the generator simulates and what the
scenario's meta.json records: a scenario of N rows is the same bytes whether N
came from the map or from the single count, and data written before the map
existed still match their configuration.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar, get_args, get_origin, get_type_hints

# A per-scenario count as the frozen dataclasses hold it: (scenario, count) pairs in the
# config's order (a tuple, so the params stay hashable); a mapping in YAML and to_dict.
ScenarioCounts = tuple[tuple[str, int], ...]


class KnobParams:
    """Config <-> frozen knob dataclass: an unknown knob is an error; YAML lists are tuples inside."""

    # Per-scenario count knob -> the knob it overrides for the scenarios it names.
    PER_SCENARIO: ClassVar[dict[str, str]] = {}

    @classmethod
    def knob_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def from_dict(
        cls, knobs: dict[str, Any], where: str = "generator", scenarios: Collection[str] | None = None
    ) -> Any:
        """Every knob a value of its field's type, >= 0 (all are counts, seeds, stds, rates,
        shares or exponents), ranges as [low, high] with low <= high, per-scenario counts a
        mapping of names to integers >= 1 (names among ``scenarios`` when given); errors
        name ``where.knob``."""
        names = cls.knob_names()
        unknown = sorted(set(knobs) - names)
        if unknown:
            raise ValueError(f"{where}: unknown knob(s) {unknown}; known: {sorted(names)}")
        hints = get_type_hints(cls)
        for name, value in knobs.items():
            if hints[name] == ScenarioCounts and isinstance(value, Mapping):
                for scenario, count in value.items():  # name the entry, not the whole map
                    if (expected := _count_problem(scenario, count)) is not None:
                        raise ValueError(f"{where}.{name}.{scenario}={count!r}: expected {expected}")
            if (expected := _knob_problem(hints[name], value)) is not None:
                raise ValueError(f"{where}.{name}={value!r}: expected {expected}")
        clean = {k: _frozen(hints[k], v) for k, v in knobs.items()}
        try:
            params = cls(**clean)
        except ValueError as exc:  # __post_init__ says "generator: ..."
            msg = str(exc)
            raise ValueError(where + msg[len("generator"):] if msg.startswith("generator") else msg) from exc
        if scenarios is not None:
            params.check_scenario_names(scenarios, where)
        return params

    def check_scenario_names(self, scenarios: Collection[str], where: str = "generator") -> None:
        """A per-scenario count naming no configured scenario is a typo, not a size to ignore."""
        for knob in self.PER_SCENARIO:
            unknown = [s for s, _ in getattr(self, knob) if s not in scenarios]
            if unknown:
                raise ValueError(
                    f"{where}.{knob}: unknown scenario(s) {unknown}; the scenarios are {list(scenarios)}"
                )

    def for_scenario(self, scenario: str) -> Any:
        """The knobs of one scenario: its own count in place of the default, no per-scenario map.

        Idempotent; the generator simulates and records these, so a scenario's files
        depend only on its own count, never on how the config spelled it."""
        changes: dict[str, Any] = {}
        for knob, base in self.PER_SCENARIO.items():
            counts = dict(getattr(self, knob))
            changes[knob] = ()
            changes[base] = counts.get(scenario, getattr(self, base))
        return replace(self, **changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        """The knobs as config values; an empty per-scenario map is left out (the default, and
        what every scenario's meta.json records, as it did before the map existed)."""
        out = {}
        for k, v in asdict(self).items():
            if k in self.PER_SCENARIO:
                if v:
                    out[k] = dict(v)
            else:
                out[k] = list(v) if isinstance(v, tuple) else v
        return out


def _frozen(hint: Any, value: Any) -> Any:
    """A checked config value as the dataclass holds it: lists as tuples, a mapping as pairs."""
    if hint == ScenarioCounts:
        return tuple((str(k), int(v)) for k, v in value.items())
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _count_problem(scenario: Any, count: Any) -> str | None:
    """What one entry of a per-scenario count should be, when it is not; else None."""
    if not isinstance(scenario, str) or not scenario:
        return "a scenario name as the key"
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return "a row count, an integer >= 1"
    return None


def _knob_problem(hint: Any, value: Any) -> str | None:
    """What a knob of type ``hint`` should be, when ``value`` is not that; else None."""
    if hint == ScenarioCounts:
        if not isinstance(value, Mapping) or any(_count_problem(k, v) for k, v in value.items()):
            return "a mapping of scenario names to row counts (integers >= 1), e.g. {NL: 100000, ES: 30000}"
        return None
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

    PER_SCENARIO: ClassVar[dict[str, str]] = {"rows_train_by_scenario": "rows_train"}

    rows_train: int = 20_000  # per scenario, unless rows_train_by_scenario names it
    rows_train_by_scenario: ScenarioCounts = ()  # {scenario: train rows}; test rows stay rows_test
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
class TenrecGeneratorParams(KnobParams):
    """Generator knobs; defaults mirror ``conf/dataset/synthetic_tenrec.yaml`` (a test checks)."""

    PER_SCENARIO: ClassVar[dict[str, str]] = {"rows_by_scenario": "rows"}

    rows: int = 30_000  # per scenario (unless rows_by_scenario names it); the reader holds out the test rows
    rows_by_scenario: ScenarioCounts = ()  # {scenario: rows}
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
