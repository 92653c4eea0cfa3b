"""Tables and plot of a strategy comparison, as pure functions over lists of row dicts.

Kept apart from the runner (pfms_server.experiments.compare) so the numbers can be checked on
hand-made rows. Spread is the sample standard deviation over seeds (numpy, ddof=1);
with one seed it is NaN (undefined), shown as no "±" in Markdown. NaN metrics (an AUC
on a split with one class) are left out of means and of n_seeds.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

MEAN = "mean"  # scenario and task of the row that averages over all scenarios and tasks
RESULT_FIELDS = ["arm", "scenario", "task", "final_round", "auc_mean", "auc_std",
                 "logloss_mean", "logloss_std", "n_seeds"]
UPLOAD_FIELDS = ["arm", "seed", "round", "scenario", "bytes"]
TIMING_FIELDS = ["arm", "seed", "seconds"]
PAIRED_FIELDS = ["arm", "reference", "auc_diff_mean", "auc_diff_std", "n_seeds", "wins"]
PER_SCENARIO_FIELDS = ["arm", "scenario", "task", "final_round", "auc_mean", "auc_std", "n_seeds", "reference",
                       "auc_diff_mean", "auc_diff_std", "n_paired", "wins"]
FAILED_FIELDS = ["arm", "seed", "why"]
FAILED = "FAILED"  # the cell of an arm whose every run failed


def _ordered(values: Iterable) -> list:
    return list(dict.fromkeys(values))


def _finite(values: Iterable) -> list[float]:
    return [float(v) for v in values if v is not None and v != "" and not math.isnan(float(v))]


def spread(values: Iterable) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1, n) of the finite values; std is NaN for n < 2."""
    vals = np.asarray(_finite(values), dtype=float)
    if vals.size == 0:
        return math.nan, math.nan, 0
    std = float(np.std(vals, ddof=1)) if vals.size >= 2 else math.nan
    return float(np.mean(vals)), std, int(vals.size)


def final_rows(rows: Sequence[dict], split: str = "test") -> list[dict]:
    """Each (arm, seed)'s rows of ``split`` at that run's last evaluated round."""
    last: dict[tuple, int] = {}
    for r in rows:
        if r["split"] == split:
            key = (r["arm"], r["seed"])
            last[key] = max(last.get(key, r["round"]), r["round"])
    return [r for r in rows if r["split"] == split and r["round"] == last[(r["arm"], r["seed"])]]


def per_seed_means(rows: Sequence[dict]) -> list[dict]:
    """One row per (arm, seed, round): the mean AUC and LogLoss over its scenarios and tasks."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arm"], r["seed"], r["round"]), []).append(r)
    out = []
    for (arm, seed, rnd), grp in groups.items():
        auc = _finite(g["auc"] for g in grp)
        ll = _finite(g["logloss"] for g in grp)
        out.append({"arm": arm, "seed": seed, "round": rnd, "scenario": MEAN, "task": MEAN,
                    "auc": float(np.mean(auc)) if auc else math.nan,
                    "logloss": float(np.mean(ll)) if ll else math.nan})
    return out


def aggregate(final: Sequence[dict], arms: Sequence[str] | None = None) -> list[dict]:
    """Mean and spread over seeds per arm x scenario x task, then the arm's mean row.

    ``final`` holds one test row per (arm, seed, scenario, task) (see final_rows).
    The mean row averages each seed over scenarios and tasks first, so its spread is
    the spread of that seed-level mean, not of the cells.
    """
    arms = list(arms) if arms is not None else _ordered(r["arm"] for r in final)
    cells = _ordered((r["scenario"], r["task"]) for r in final)
    out = []
    for arm in arms:
        mine = [r for r in final if r["arm"] == arm]
        if not mine:
            continue
        final_round = max(r["round"] for r in mine)
        for scenario, task in [*cells, (MEAN, MEAN)]:
            grp = (per_seed_means(mine) if scenario == MEAN
                   else [r for r in mine if (r["scenario"], r["task"]) == (scenario, task)])
            if not grp:
                continue
            auc_m, auc_s, n_auc = spread(g["auc"] for g in grp)
            ll_m, ll_s, _ = spread(g["logloss"] for g in grp)
            out.append({"arm": arm, "scenario": scenario, "task": task, "final_round": final_round,
                        "auc_mean": auc_m, "auc_std": auc_s, "logloss_mean": ll_m, "logloss_std": ll_s,
                        "n_seeds": n_auc})
    return out


def paired_differences(final: Sequence[dict], reference: str) -> list[dict]:
    """Each arm's mean test AUC minus ``reference``'s, seed by seed, then mean and spread over seeds.

    Every arm runs on the same data splits and initialisation for a given seed, so the
    per-seed difference removes the noise the arms share; its spread is what says whether
    a difference is real, not the two arms' unpaired spreads. ``wins``: seeds where the
    arm is above the reference. Only seeds both arms finished are paired.
    """
    seed_auc = {(r["arm"], r["seed"]): r["auc"] for r in per_seed_means(final)}
    ref = {seed: auc for (arm, seed), auc in seed_auc.items() if arm == reference}
    out = []
    for arm in _ordered(r["arm"] for r in final):
        diffs = [seed_auc[(arm, seed)] - ref[seed] for seed in ref
                 if (arm, seed) in seed_auc and not math.isnan(seed_auc[(arm, seed)]) and not math.isnan(ref[seed])]
        mean, std, n = spread(diffs)
        out.append({"arm": arm, "reference": reference, "auc_diff_mean": mean, "auc_diff_std": std, "n_seeds": n,
                    "wins": sum(d > 0 for d in diffs)})
    return out


def per_scenario(final: Sequence[dict], reference: str, arms: Sequence[str] | None = None) -> list[dict]:
    """Per arm x scenario x task: test AUC (mean ± std over seeds) and its paired difference from
    ``reference`` in that cell; each scenario also gets a ``mean`` task row (its tasks averaged per seed).

    The overall mean hides which scenarios gain: with skewed sizes federation may help the
    small scenarios and cost the large one, so each cell gets its own seed-by-seed
    difference (the same pairing as ``paired_differences``). Only seeds both arms
    finished, with a finite AUC in the cell, are paired; ``wins`` counts seeds above.
    """
    arms = list(arms) if arms is not None else _ordered(r["arm"] for r in final)
    scenarios = _ordered(r["scenario"] for r in final)
    cells = [c for s in scenarios for c in [*_ordered((r["scenario"], r["task"]) for r in final
                                                        if r["scenario"] == s), (s, MEAN)]]
    auc: dict[tuple, float] = {}  # (arm, seed, scenario, task) -> AUC; task MEAN = mean over the tasks
    for r in final:
        auc[(r["arm"], r["seed"], r["scenario"], r["task"])] = float(r["auc"]) if _finite([r["auc"]]) else math.nan
    for (arm, seed, scenario) in _ordered((r["arm"], r["seed"], r["scenario"]) for r in final):
        vals = _finite(r["auc"] for r in final if (r["arm"], r["seed"], r["scenario"]) == (arm, seed, scenario))
        auc[(arm, seed, scenario, MEAN)] = float(np.mean(vals)) if vals else math.nan
    out = []
    for arm in arms:
        seeds = _ordered(r["seed"] for r in final if r["arm"] == arm)
        if not seeds:
            continue
        final_round = max(r["round"] for r in final if r["arm"] == arm)
        ref_seeds = _ordered(r["seed"] for r in final if r["arm"] == reference)
        for scenario, task in cells:
            mine = [auc.get((arm, seed, scenario, task), math.nan) for seed in seeds]
            if not any((arm, seed, scenario, task) in auc for seed in seeds):
                continue
            mean, std, n = spread(mine)
            diffs = [auc[(arm, seed, scenario, task)] - auc[(reference, seed, scenario, task)] for seed in ref_seeds
                     if not math.isnan(auc.get((arm, seed, scenario, task), math.nan))
                     and not math.isnan(auc.get((reference, seed, scenario, task), math.nan))]
            d_mean, d_std, d_n = spread(diffs)
            out.append({"arm": arm, "scenario": scenario, "task": task, "final_round": final_round,
                        "auc_mean": mean, "auc_std": std, "n_seeds": n, "reference": reference,
                        "auc_diff_mean": d_mean, "auc_diff_std": d_std, "n_paired": d_n,
                        "wins": sum(d > 0 for d in diffs)})
    return out


def mean_by_round(rows: Sequence[dict], split: str = "test") -> dict[str, dict[str, np.ndarray]]:
    """Per arm: rounds, and the mean / min / max over seeds of the per-seed mean AUC at each round."""
    seeds = per_seed_means([r for r in rows if r["split"] == split])
    out = {}
    for arm in _ordered(r["arm"] for r in seeds):
        mine = [r for r in seeds if r["arm"] == arm]
        rounds = sorted({r["round"] for r in mine})
        stats = [_finite(r["auc"] for r in mine if r["round"] == k) for k in rounds]
        out[arm] = {"round": np.array(rounds),
                    "mean": np.array([np.mean(s) if s else np.nan for s in stats]),
                    "min": np.array([np.min(s) if s else np.nan for s in stats]),
                    "max": np.array([np.max(s) if s else np.nan for s in stats])}
    return out


def timing_summary(timing: Sequence[dict]) -> dict[str, tuple[float, float, int]]:
    """Per arm: (mean, std, n) of the wall seconds of its runs."""
    arms = _ordered(t["arm"] for t in timing)
    return {a: spread(t["seconds"] for t in timing if t["arm"] == a) for a in arms}


def upload_summary(upload: Sequence[dict]) -> dict[str, dict[str, float] | None]:
    """Per arm: mean bytes one client uploads in one round, and mean total bytes of a run
    (all clients, all rounds); None where the runs did not record upload bytes."""
    out: dict[str, dict[str, float] | None] = {}
    for arm in _ordered(u["arm"] for u in upload):
        mine = [u for u in upload if u["arm"] == arm]
        if any(u["bytes"] is None or u["bytes"] == "" for u in mine):
            out[arm] = None
            continue
        per_run: dict = {}
        for u in mine:
            per_run[u["seed"]] = per_run.get(u["seed"], 0) + int(u["bytes"])
        out[arm] = {"per_client_round": float(np.mean([int(u["bytes"]) for u in mine])),
                    "per_run": float(np.mean(list(per_run.values())))}
    return out


def fmt_spread(mean: float, std: float, decimals: int = 4) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{decimals}f}" if math.isnan(std) else f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _verdict(p: dict) -> str:
    mean, std, n, wins = p["auc_diff_mean"], p["auc_diff_std"], p["n_seeds"], p["wins"]
    if n == 0:
        return "no paired seeds"
    if n < 2 or math.isnan(std):
        return "one seed: no spread"
    if abs(mean) > std and wins in (0, n):
        return "above" if mean > 0 else "below"
    return "within spread"


def per_scenario_markdown(rows: Sequence[dict], arms: Sequence[str], decimals: int = 4) -> list[str]:
    """The per-scenario table: per arm, each scenario's mean AUC over its tasks and, per cell, the
    paired difference from the reference with the seeds above it (the reference's row: its AUC)."""
    ref = rows[0]["reference"]
    cells = _ordered((r["scenario"], r["task"]) for r in rows)
    by = {(r["arm"], r["scenario"], r["task"]): r for r in rows}

    def cell(arm: str, scenario: str, task: str) -> str:
        r = by.get((arm, scenario, task))
        if r is None:
            return "n/a"
        if arm == ref:
            return fmt_spread(r["auc_mean"], r["auc_std"], decimals)
        if r["n_paired"] == 0:
            return "n/a"
        sign = "+" if r["auc_diff_mean"] >= 0 else ""
        return f"{sign}{fmt_spread(r['auc_diff_mean'], r['auc_diff_std'], decimals)} ({r['wins']}/{r['n_paired']})"

    header = ["arm", *(f"{s} ({t})" if t == MEAN else f"{s}/{t}" for s, t in cells)]
    body = [[a, *(cell(a, s, t) for s, t in cells)] for a in arms if any(k[0] == a for k in by)]
    return ["", f"## Test AUC per scenario: difference from {ref}'s, paired by seed", "",
            f"{ref}'s row: its test AUC (mean ± std over seeds). Other rows: the arm's AUC minus {ref}'s in "
            f"that cell, seed by seed, mean ± std (seeds above {ref}). `<scenario> ({MEAN})`: the scenario's "
            "tasks averaged per seed first. Absolute AUCs of every arm: per_scenario.csv.", "",
            *_table(header, body)]


def _bytes(n: float) -> str:
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _cell(text: str) -> str:
    """Free text as one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in body)]


def markdown(results: Sequence[dict], timing: Sequence[dict], upload: Sequence[dict], *,
             seeds: Sequence[int], arm_overrides: dict[str, list[str]], common: Sequence[str] = (),
             best_val: dict[str, tuple[float, float, int]] | None = None, paired: Sequence[dict] = (),
             failed: Sequence[dict] = (), scenario_rows: Sequence[dict] = (), decimals: int = 4) -> str:
    """The comparison as Markdown: AUC and LogLoss tables (rows = arms), cost, and what each arm is.

    ``failed`` (arm, seed, why): runs that report no AUC. An arm with no completed run
    shows FAILED in every cell; the failed runs are listed with why under the tables."""
    present = _ordered([*(r["arm"] for r in results), *(f["arm"] for f in failed)])
    arms = _ordered([*(a for a in arm_overrides if a in present), *present])
    cells = _ordered((r["scenario"], r["task"]) for r in results if r["scenario"] != MEAN)
    by = {(r["arm"], r["scenario"], r["task"]): r for r in results}
    rounds = sorted({int(r["final_round"]) for r in results})
    done = {r["arm"] for r in results}
    lines = [
        "# Strategy comparison", "",
        f"{len(arms)} arms x {len(seeds)} seeds ({', '.join(map(str, seeds))}); test split at the final round "
        f"({', '.join(map(str, rounds))}). Cells: mean ± sample std (ddof=1) over seeds"
        + (" (one seed: no spread)" if len(seeds) < 2 else "")
        + f"; `{MEAN}` averages each seed over the {len(cells)} scenario/task cells, then over seeds.",
    ]
    for metric, title in (("auc", "Test AUC"), ("logloss", "Test LogLoss")):
        header = ["arm", *(f"{s}/{t}" for s, t in cells), MEAN]
        body = [[a, *(fmt_spread(by[(a, s, t)][f"{metric}_mean"], by[(a, s, t)][f"{metric}_std"], decimals)
                      if (a, s, t) in by else FAILED if a not in done else "n/a" for s, t in [*cells, (MEAN, MEAN)])]
                for a in arms]
        lines += ["", f"## {title}", "", *_table(header, body)]
    if failed:
        lines += ["", "## Failed runs", "",
                  f"{len(failed)} run(s) failed and report no AUC; an arm's cells above average its completed "
                  "seeds only. Running the same command again redoes only these.", "",
                  *_table(["arm", "seed", "why"], [[f["arm"], str(f["seed"]), _cell(str(f["why"]))] for f in failed])]
    if paired:
        ref = paired[0]["reference"]
        body = [[p["arm"], "n/a" if p["n_seeds"] == 0 else fmt_spread(p["auc_diff_mean"], p["auc_diff_std"], decimals),
                 f"{p['wins']}/{p['n_seeds']}", _verdict(p)] for p in paired if p["arm"] != ref]
        lines += ["", f"## Test mean AUC minus {ref}'s, paired by seed", "",
                  f"Per seed: the arm's mean test AUC minus {ref}'s on the same seed; mean ± std of those "
                  "differences. \"above\"/\"below\": the mean difference is larger than its spread "
                  "(|mean| > std) and every seed agrees; otherwise \"within spread\".", "",
                  *_table(["arm", f"AUC − {ref}", "seeds above", "verdict"], body)]
    if scenario_rows:
        lines += per_scenario_markdown(scenario_rows, arms, decimals)
    if best_val:
        body = [[a, fmt_spread(*best_val[a][:2], decimals)] for a in arms if a in best_val]
        lines += ["", "## Test mean AUC at the round with the best mean validation AUC", "",
                  *_table(["arm", "test mean AUC"], body)]
    times, uploads = timing_summary(timing), upload_summary(upload)
    body = []
    for a in arms:
        t = times.get(a)
        u = uploads.get(a)
        body.append([a, fmt_spread(t[0], t[1], 1) if t else "n/a", str(t[2]) if t else "0",
                     "not recorded" if u is None else _bytes(u["per_client_round"]),
                     "not recorded" if u is None else _bytes(u["per_run"])])
    lines += ["", "## Cost", "", *_table(
        ["arm", "wall time per run (s)", "runs", "upload per client per round", "upload per run (all clients)"], body)]
    if any(v is None for v in uploads.values()):
        lines += ["", "\"not recorded\": those runs' train_log.json has no `upload_bytes`."]
    lines += ["", "Wall time: one run in this process, data generation excluded. The first run also pays the "
              "process's one-time start-up (about a second), and the first run of each seed reads its data "
              "into tensors (cached for the later runs of that seed).",
              "", "## Arms", "", *_table(["arm", "overrides"],
                                         [[a, " ".join(f"`{o}`" for o in arm_overrides.get(a, [])) or "(base config)"]
                                          for a in arms])]
    if common:
        lines += ["", "Every arm: " + " ".join(f"`{o}`" for o in common)]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: Iterable[dict], fields: Sequence[str]) -> None:
    """CSV with NaN written as 'nan' and None as an empty cell."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})


def plot_mean_auc(by_round: dict[str, dict[str, np.ndarray]], png_path: Path, split: str = "test") -> None:
    """Mean AUC over scenarios and tasks per round, one line per arm, min-max over seeds shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # 20 colours x 4 markers: up to 80 arms stay distinguishable (the default cycle repeats after 10).
    colors = plt.get_cmap("tab20").colors
    markers = ("o", "s", "^", "D")
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for i, (arm, d) in enumerate(by_round.items()):
        color = colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20]
        ax.plot(d["round"], d["mean"], marker=markers[(i // 10) % len(markers)], markersize=4, color=color, label=arm)
        ax.fill_between(d["round"], d["min"], d["max"], color=color, alpha=0.12, linewidth=0)
    ax.set_xlabel("round")
    ax.set_ylabel(f"mean {split} AUC (scenarios x tasks)")
    ax.set_title("mean over seeds; band: min-max over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
