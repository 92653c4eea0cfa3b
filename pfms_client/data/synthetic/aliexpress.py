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
list of scenarios is. A scenario's size is its own (``rows_train_by_scenario``,
see ``params``): everything here works on ``params.for_scenario(scenario)``, so a
scenario of N train rows is the same whether N is its own count or everyone's.

Streaming: rows are simulated ``BLOCK_ROWS`` at a time (``simulate_blocks``) and
appended to the CSVs as they come, so memory stays that of one block (about 0.3
GiB) at any row count; the meta's rates are running counts and its oracle AUCs
``StreamingAUC``s. Block 0 keeps the draw order of the original whole-array
generator (the scenario's own parameters drawn between its rows, label biases
calibrated on its logits), so scenarios of up to ``BLOCK_ROWS`` rows, the
project's default ones among them, are byte-identical to what it wrote; block
b >= 1 has its own stream ``(seed, scenario, b)``.

On disk: ``{out}/{scenario}/train.csv``, ``test.csv`` and ``meta.json`` (params,
target and measured rates, oracle AUCs), plus ``{out}/meta.json`` indexing all
scenarios present. A scenario folder is built in a temp dir and renamed into
place (``pfms_client.data.files``), so readers never see a half-written folder,
and four Flower clients can generate their own scenarios at the same time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..csv_writer import CsvWriter
from ..errors import DataValidationError
from ..files import META_FILE, RATE_DIGITS, staged_folder, update_index, write_json
from .params import GeneratorParams
from .progress import Progress
from .stats import AUC_BINS, AUC_EXACT_ROWS, StreamingAUC, calibrate, scenario_key, sigmoid

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

# Rows are simulated and written BLOCK_ROWS at a time, each block from its own random
# stream (see simulate_blocks): a fixed part of the data, not a tuning knob. It is
# above every size the project's configs use (docs/results.md: 90,000 rows), so
# those scenarios are byte-identical to the ones made before streaming, and small
# enough that one block stays well under 1 GiB of memory.
BLOCK_ROWS = 100_000
_SHARED_STREAM = 0  # rng stream tags, so shared and per-scenario draws never collide
_SCENARIO_STREAM = 1  # block 0 (and the scenario's own parameters)
_BLOCK_STREAM = 2  # blocks 1, 2, ...
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
    """Generated rows of one scenario, or of one block of it (train rows first, then test rows)."""

    scenario: str
    columns: dict[str, np.ndarray]  # keyed by COLUMNS, in that order
    rows_train: int  # how many of these rows are train rows
    targets: dict[str, float]  # the calibrated expected rates
    probabilities: dict[str, np.ndarray]  # true P(task) per row, for oracle AUCs in meta.json

    def part(
        self, which: str, arrays: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Rows of ``which`` ("train" | "test") of ``columns`` (or of ``arrays``)."""
        sl = slice(0, self.rows_train) if which == "train" else slice(self.rows_train, None)
        return {k: v[sl] for k, v in (self.columns if arrays is None else arrays).items()}


@dataclass(frozen=True)
class _IdWindow:
    """A scenario's Zipf-popular window of one field's shared id space."""

    id_of_rank: np.ndarray  # [width] the id at each popularity rank
    popularity: np.ndarray  # [width] probabilities, decreasing

    @classmethod
    def draw(cls, rng: np.random.Generator, vocab: int, params: GeneratorParams) -> _IdWindow:
        width = max(1, int(np.ceil(params.id_window * vocab)))
        offset = int(rng.integers(0, vocab - width + 1))
        exponent = rng.uniform(*params.zipf_range)
        popularity = np.arange(1, width + 1, dtype=np.float64) ** -exponent
        popularity /= popularity.sum()
        return cls(offset + rng.permutation(width), popularity)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.id_of_rank[rng.choice(len(self.popularity), size=n, p=self.popularity)]


@dataclass
class _Scenario:
    """One scenario's own parameters: drawn once, in block 0, then used by every block."""

    ctr: float
    ctcvr: float
    mean_shift: np.ndarray  # [Dn]
    scale: np.ndarray  # [Dn]
    zero_prob: np.ndarray  # [Dn]
    w_click: np.ndarray  # [Dn]
    w_conv: np.ndarray  # [Dn]
    site_code: int
    windows: list[_IdWindow] = field(default_factory=list)  # fields 2..F
    effect_click: list[np.ndarray] = field(default_factory=list)  # fields 2..F, [vocab]
    effect_conv: list[np.ndarray] = field(default_factory=list)
    click_bias: float = 0.0  # calibrated on block 0
    conv_bias: float = 0.0
    next_search_id: int = 0  # the id the next new search gets


def simulate_scenario(scenario: str, params: GeneratorParams) -> ScenarioArrays:
    """All rows of one scenario in memory (the blocks of ``simulate_blocks``, joined)."""
    params = params.for_scenario(scenario)
    blocks = list(simulate_blocks(scenario, params))
    return ScenarioArrays(
        scenario=scenario,
        columns={c: np.concatenate([b.columns[c] for b in blocks]) for c in COLUMNS},
        rows_train=params.rows_train,
        targets=blocks[0].targets,
        probabilities={
            k: np.concatenate([b.probabilities[k] for b in blocks]) for k in ("click", "conversion")
        },
    )


def simulate_blocks(scenario: str, params: GeneratorParams) -> Iterator[ScenarioArrays]:
    """The rows of one scenario, ``BLOCK_ROWS`` at a time; deterministic in ``(params, scenario)``.

    Block 0 draws from the scenario's stream ``(seed, scenario)``: its rows and, in
    between, the scenario's own parameters (shift, id windows, id effects, search id
    base), in the order of the original whole-array generator, and it calibrates the
    label biases on its own logits; so a scenario of up to ``BLOCK_ROWS`` rows is the
    one that generator made. Block b >= 1 draws only its rows, from the stream
    ``(seed, scenario, b)``. The block size is therefore part of the data (a
    different size would give other rows), which is why it is a constant.
    """
    params = params.for_scenario(scenario)
    shared = _shared_structure(params)
    key = scenario_key(scenario)
    n_total = params.rows_train + params.rows_test
    scen: _Scenario | None = None
    for b, start in enumerate(range(0, n_total, BLOCK_ROWS)):
        n = min(BLOCK_ROWS, n_total - start)
        if b == 0:
            rng = np.random.default_rng([params.seed, _SCENARIO_STREAM, key])
        else:
            rng = np.random.default_rng([params.seed, _BLOCK_STREAM, key, b])
        block, scen = _simulate_block(rng, n, shared, params, scen)
        yield ScenarioArrays(
            scenario=scenario,
            columns=block[0],
            rows_train=min(n, max(0, params.rows_train - start)),
            targets={"ctr": float(scen.ctr), "ctcvr": float(scen.ctcvr)},
            probabilities=block[1],
        )


def _simulate_block(
    rng: np.random.Generator,
    n: int,
    shared: _Shared,
    params: GeneratorParams,
    scen: _Scenario | None,
) -> tuple[tuple[dict[str, np.ndarray], dict[str, np.ndarray]], _Scenario]:
    """``n`` rows; with ``scen`` None (block 0) the scenario's parameters are drawn too."""
    dn, nf = NUM_NUMERICAL, NUM_CATEGORICAL
    first = scen is None
    if scen is None:  # per-scenario parameters, always drawn in this order
        scen = _Scenario(
            ctr=rng.uniform(*params.ctr_range),
            ctcvr=rng.uniform(*params.ctcvr_range),
            mean_shift=rng.normal(0.0, params.num_mean_shift, dn),
            scale=np.exp(rng.normal(0.0, params.num_scale_shift, dn)),
            zero_prob=rng.uniform(0.0, params.zero_fraction_max, dn),
            w_click=_unit_direction(rng.normal(size=dn), shared.cov),
            w_conv=_unit_direction(rng.normal(size=dn), shared.cov),
            site_code=int(rng.integers(1, params.site_code_max + 1)),
        )

    # Numerical features: u is the latent value the labels see (0 where missing).
    factors = rng.normal(size=(n, params.num_factors))
    noise = rng.normal(size=(n, dn))
    latent = factors @ shared.loadings.T + noise * shared.uniqueness
    del factors, noise
    z = scen.mean_shift + scen.scale * latent
    del latent
    present = rng.random((n, dn)) >= scen.zero_prob
    u = np.where(present, z, 0.0)
    x_num = np.where(present, 1.0 / (1.0 + np.exp(-z)), 0.0)
    del z, present

    # Categorical ids and their label effects.
    x_cat = np.empty((n, nf), dtype=np.int64)
    x_cat[:, 0] = scen.site_code
    id_click = np.zeros(n)
    id_conv = np.zeros(n)
    rho = params.id_shared_fraction
    for f in range(1, nf):
        vocab = int(shared.vocab[f])
        if first:
            scen.windows.append(_IdWindow.draw(rng, vocab, params))
        ids = scen.windows[f - 1].sample(rng, n)
        x_cat[:, f] = ids
        if first:
            local_click = rng.normal(size=vocab)
            local_conv = rng.normal(size=vocab)
            scen.effect_click.append(
                np.sqrt(rho) * shared.id_effect_click[f] + np.sqrt(1 - rho) * local_click
            )
            scen.effect_conv.append(
                np.sqrt(rho) * shared.id_effect_conv[f] + np.sqrt(1 - rho) * local_conv
            )
        id_click += shared.field_weight_click[f] * scen.effect_click[f - 1][ids]
        id_conv += shared.field_weight_conv[f] * scen.effect_conv[f - 1][ids]

    # Label logits (without bias), each part scaled to its configured std.
    shared_part = u @ shared.w_shared
    inter = (u[:, shared.pairs[:, 0]] * u[:, shared.pairs[:, 1]]) @ shared.pair_signs
    inter /= np.sqrt(len(shared.pair_signs))
    click_logit = (
        params.click_shared * shared_part
        + params.click_scenario * (u @ scen.w_click)
        + params.click_interactions * inter
        + params.click_ids * id_click
    )
    conv_logit = (
        params.conv_shared * shared_part
        + params.conv_task * (u @ shared.w_conv)
        + params.conv_scenario * (u @ scen.w_conv)
        + params.conv_ids * id_conv
    )
    del u
    if first:
        scen.click_bias = calibrate(click_logit, scen.ctr)
    p_click = sigmoid(click_logit + scen.click_bias)
    if first:
        scen.conv_bias = calibrate(conv_logit, scen.ctcvr, weight=p_click)
    p_conv = sigmoid(conv_logit + scen.conv_bias)
    click = rng.random(n) < p_click
    conversion = click & (rng.random(n) < p_conv)

    new_search = rng.random(n) < 1.0 / params.search_group_mean
    if first:
        new_search[0] = True
        scen.next_search_id = int(rng.integers(0, _SEARCH_ID_BASE_MAX))
    search_id = np.cumsum(new_search) - 1 + scen.next_search_id
    scen.next_search_id = int(search_id[-1]) + 1 if n else scen.next_search_id

    columns: dict[str, np.ndarray] = {ID_COLUMN: search_id}
    columns.update({name: x_cat[:, i] for i, name in enumerate(CATEGORICAL)})
    columns.update({name: x_num[:, i] for i, name in enumerate(NUMERICAL)})
    columns["click"] = click.astype(np.int64)
    columns["conversion"] = conversion.astype(np.int64)
    return (columns, {"click": p_click, "conversion": p_click * p_conv}), scen


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
    """Generate (or regenerate) every scenario; returns each scenario's meta.

    ``rows_train_by_scenario`` (a knob) gives named scenarios their own train rows;
    a name not in ``scenarios`` is an error."""
    GeneratorParams.from_dict(
        {"rows_train": rows_train, "rows_test": rows_test, "seed": seed, **knobs},
        scenarios=scenarios,
    )
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
    """Generate one scenario alone; byte-identical to the same scenario in a full run.

    ``rows_train_by_scenario={scenario: n}`` among the knobs sets this scenario's own
    train rows (a name other than ``scenario`` in it is ignored here: ``generate``
    checks the names against its list)."""
    params = GeneratorParams.from_dict(
        {"rows_train": rows_train, "rows_test": rows_test, "seed": seed, **knobs}
    )
    return write_scenario(Path(out_dir), scenario, params, OutputNames(), overwrite=True)


def write_scenario(
    out_dir: Path, scenario: str, params: GeneratorParams, names: OutputNames, overwrite: bool
) -> dict[str, Any]:
    """Simulate block by block into a temp dir (CSVs appended as they go), rename, index.

    Memory is bounded by one block (``BLOCK_ROWS`` rows) whatever the row count;
    the meta's rates are running counts and its oracle AUCs ``StreamingAUC``s.
    """
    params = params.for_scenario(scenario)
    decimals = [params.float_decimals if c in NUMERICAL else None for c in COLUMNS]
    stats = _ScenarioStats(scenario, params, names)
    progress = Progress(f"{scenario}", params.rows_train + params.rows_test)
    with staged_folder(names.folder(out_dir, scenario), overwrite) as tmp:
        files = names.files(scenario)
        with open(tmp / files["train"], "wb") as train_fh, open(tmp / files["test"], "wb") as test_fh:
            writers = {
                "train": CsvWriter(train_fh, COLUMNS, decimals),
                "test": CsvWriter(test_fh, COLUMNS, decimals),
            }
            for block in simulate_blocks(scenario, params):
                for part, writer in writers.items():
                    cols = block.part(part)
                    if len(cols["click"]):
                        writer.write([cols[c] for c in COLUMNS])
                stats.add(block)
                progress.advance(len(block.columns["click"]))
        meta = stats.meta()
        write_json(tmp / META_FILE, meta)
    update_index(out_dir, scenario, meta)
    progress.done()
    return meta


def ensure_aliexpress_generated(settings: DatasetSettings, scenarios: Sequence[str]) -> None:
    """Generate the scenarios whose folders are missing; check existing ones.

    An existing folder made with other generator parameters is an error rather
    than silently reused. (``pfms_client.data.ensure_generated`` picks the layout.)
    """
    if "{scenario}" not in str(settings.scenario_dir):
        raise ValueError("dataset.generator needs a scenario_dir containing '{scenario}'")
    params = GeneratorParams.from_dict(
        settings.generator, where="dataset.generator", scenarios=settings.scenarios
    )
    names = OutputNames(
        str(settings.scenario_dir), str(settings.train_file), str(settings.test_file)
    )
    for scenario in scenarios:
        settings.check_scenario(scenario)
        folder = names.folder(settings.root, scenario)
        if not folder.is_dir():
            write_scenario(settings.root, scenario, params, names, overwrite=False)
        _check_existing(folder, params.for_scenario(scenario))


class _ScenarioStats:
    """What meta.json reports, accumulated block by block: counts, rates, test oracle AUCs."""

    def __init__(self, scenario: str, params: GeneratorParams, names: OutputNames) -> None:
        self.scenario, self.params, self.names = scenario, params, names
        self.targets: dict[str, float] = {}
        self.counts = {part: {"clicks": 0, "conversions": 0} for part in ("train", "test")}
        self.auc = {task: StreamingAUC(AUC_EXACT_ROWS, AUC_BINS) for task in ("ctr", "ctcvr")}

    def add(self, block: ScenarioArrays) -> None:
        self.targets = block.targets
        for part, counts in self.counts.items():
            cols = block.part(part)
            counts["clicks"] += int(cols["click"].sum())
            counts["conversions"] += int(cols["conversion"].sum())
        test, test_p = block.part("test"), block.part("test", block.probabilities)
        if len(test["click"]):
            self.auc["ctr"].add(test["click"], test_p["click"])
            self.auc["ctcvr"].add(test["conversion"], test_p["conversion"])

    def meta(self) -> dict[str, Any]:
        p = self.params
        meta: dict[str, Any] = {
            "scenario": self.scenario,
            "params": p.to_dict(),
            "files": self.names.files(self.scenario),
            "rows": {"train": p.rows_train, "test": p.rows_test},
            "targets": {k: round(v, RATE_DIGITS) for k, v in self.targets.items()},
        }
        for part, rows in (("train", p.rows_train), ("test", p.rows_test)):
            c = self.counts[part]
            meta[part] = {
                **c,
                "ctr": round(c["clicks"] / rows, RATE_DIGITS),
                "ctcvr": round(c["conversions"] / rows, RATE_DIGITS),
            }
        meta["oracle_auc_test"] = {task: auc.value() for task, auc in self.auc.items()}
        if not all(auc.exact for auc in self.auc.values()):  # only above AUC_EXACT_ROWS test rows
            meta["oracle_auc_test_max_error"] = {
                task: float(f"{auc.error_bound():.2g}") for task, auc in self.auc.items()
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
