"""Mutation score of the algorithm's code: which deliberate bugs the fast tests catch.

    python benchmarks/mutation_score.py                 # run mutmut, then report
    python benchmarks/mutation_score.py --no-run        # report the last run again
    python benchmarks/mutation_score.py --write docs/mutation-report.md

mutmut (pip install -e '.[mutation]') mutates the modules listed in pyproject.toml's
[tool.mutmut] (the server's aggregation math and the client's local update) and runs,
for each mutant, the fast tests that call the mutated function. A mutant the tests
fail on is killed (a timeout counts as killed: the bug was noticed).

Every survivor must be explained in docs/mutation_survivors.toml, keyed by file,
function and the mutated code, so the entry outlives renumbering and file moves:
``equivalent`` (no input can tell it from the original; left out of the score) or
``harmless`` (observable, but not a wrong result; counted as a survivor). The score
of a module is killed / (mutants - equivalent). Prints one key=value per line; the
report is not a CI gate.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import subprocess
import sys
import time
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANNOTATIONS = ROOT / "docs" / "mutation_survivors.toml"
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}
UNFINISHED = {"not checked", "check was interrupted by user"}  # a run that did not finish: not a survivor
KEY_RE = re.compile(r"^(?P<module>[\w.]+)\.x(?:ǁ(?P<cls>\w+)ǁ(?P<method>\w+)|_(?P<func>\w+))__mutmut_(?P<n>\d+)$")


@dataclass
class Mutant:
    key: str
    status: str
    file: str = ""
    function: str = ""
    mutated: str = ""
    verdict: str = ""  # equivalent | harmless | "" (unexplained), for survivors only
    why: str = ""


def mutmut(*args: str, capture: bool = True) -> str:
    exe = Path(sys.executable).parent / "mutmut"
    out = subprocess.run([str(exe), *args], cwd=ROOT, capture_output=capture, text=True, check=False)
    return out.stdout if capture else ""


def parse_key(m: Mutant) -> None:
    match = KEY_RE.match(m.key)
    if not match:
        raise ValueError(f"unexpected mutant name {m.key!r}")
    m.file = match["module"].rsplit(".", 1)[-1] + ".py"
    m.function = match["func"] or f"{match['cls']}.{match['method']}"


def mutant_sources(module: str) -> dict[str, str]:
    """Every function's source in mutmut's copy of a module (originals and mutants), by name."""
    path = ROOT / "mutants" / Path(*module.split(".")).with_suffix(".py")
    text = path.read_text()
    lines = text.splitlines()
    return {node.name: "\n".join(lines[node.lineno - 1:node.end_lineno])
            for node in ast.walk(ast.parse(text)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def mutant_diff(key: str, sources: dict[str, str]) -> str:
    """The unified diff between a mutant and its original function (what `mutmut show` prints, faster)."""
    name = key.rsplit(".", 1)[-1]
    orig_name = name.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"
    mutant = sources[name].replace(name, orig_name, 1)
    diff = "\n".join(difflib.unified_diff(sources[orig_name].splitlines(), mutant.splitlines(), lineterm="", n=0))
    bare = re.sub(r"^x(?:ǁ\w+ǁ|_)", "", orig_name.rsplit("__mutmut_", 1)[0])
    return diff.replace(orig_name, bare)  # a mutated signature reads as the source does


def mutated_code(diff: str) -> str:
    """The lines the mutant put in (or, for a deletion, the lines it took out), whitespace-normalised."""
    added = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    removed = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    return " / ".join(added) if added else "deleted: " + " / ".join(removed)


def normalise(code: str) -> str:
    return " ".join(code.split())


def load_annotations() -> list[dict]:
    if not ANNOTATIONS.is_file():
        return []
    entries = tomllib.loads(ANNOTATIONS.read_text()).get("mutant", [])
    for e in entries:
        missing = {"file", "function", "mutated", "verdict", "why"} - set(e)
        if missing or e["verdict"] not in ("equivalent", "harmless"):
            raise ValueError(f"{ANNOTATIONS}: bad entry {e} (needs file, function, mutated, "
                             f"verdict equivalent|harmless, why)")
    return entries


def collect() -> list[Mutant]:
    mutants = []
    for line in mutmut("results", "--all", "true").splitlines():
        if ": " not in line:
            continue
        key, status = (s.strip() for s in line.rsplit(": ", 1))
        m = Mutant(key, status)
        parse_key(m)
        mutants.append(m)
    if not mutants:
        raise SystemExit("mutation_score: mutmut has no results; run without --no-run first")
    return mutants


def explain(mutants: list[Mutant]) -> list[dict]:
    """Attach each survivor's diff and its annotation; return the annotations that matched nothing."""
    entries = load_annotations()
    index = defaultdict(list)
    for e in entries:
        index[(e["file"], e["function"], normalise(e["mutated"]))].append(e)
    used = set()
    sources: dict[str, dict[str, str]] = {}
    for m in mutants:
        if m.status in DETECTED or m.status in UNFINISHED:
            continue
        module = m.key.rsplit(".", 1)[0]
        if module not in sources:
            sources[module] = mutant_sources(module)
        m.mutated = mutated_code(mutant_diff(m.key, sources[module]))
        for e in index.get((m.file, m.function, normalise(m.mutated)), []):
            m.verdict, m.why = e["verdict"], e["why"]
            used.add(id(e))
    return [e for e in entries if id(e) not in used]


def survivors(mutants: list[Mutant]) -> list[Mutant]:
    return [m for m in mutants if m.status not in DETECTED and m.status not in UNFINISHED]


def summarise(mutants: list[Mutant]) -> dict[str, dict[str, int]]:
    per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for m in mutants:
        row = per[m.file]
        row["mutants"] += 1
        if m.status in DETECTED:
            row["killed"] += 1
        elif m.status in UNFINISHED:
            row["not_checked"] += 1
        elif m.verdict:
            row[m.verdict] += 1
        else:
            row["unexplained"] += 1
    return per


def score(row: dict[str, int]) -> float:
    denominator = row["mutants"] - row["equivalent"] - row["not_checked"]
    return row["killed"] / denominator if denominator else 1.0


def group_of(file: str, mutants: list[Mutant]) -> str:
    module = next(m.key for m in mutants if m.file == file)
    return "client" if module.startswith("pfms_client") else "aggregation"


def report_md(per: dict, mutants: list[Mutant], seconds: float | None) -> str:
    lines = ["# Mutation report", "", "Written by `python benchmarks/mutation_score.py --write docs/mutation-report.md`"
             " (mutmut; what is mutated and against which tests: `[tool.mutmut]` in pyproject.toml).", ""]
    if seconds is not None:
        lines += [f"mutmut run: {seconds / 60:.1f} min on this machine.", ""]
    lines += ["| module | mutants | killed | equivalent | harmless | unexplained | score |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for file in sorted(per, key=lambda f: (group_of(f, mutants), f)):
        r = per[file]
        lines.append(f"| {group_of(file, mutants)}/{file} | {r['mutants']} | {r['killed']} | {r['equivalent']} | "
                     f"{r['harmless']} | {r['unexplained']} | {score(r):.3f} |")
    lines += ["", "score = killed / (mutants - equivalent); a timeout counts as killed.", "",
              "## Every survivor", ""]
    for m in sorted(survivors(mutants), key=lambda m: (m.file, m.function, m.key)):
        verdict = m.verdict or "UNEXPLAINED"
        lines.append(f"- `{m.file}` `{m.function}` ({m.status}, {verdict}): `{m.mutated}`"
                     + (f" — {m.why}" if m.why else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-run", action="store_true", help="report the last mutmut run without running it again")
    p.add_argument("--max-children", type=int, default=None, help="parallel mutant workers (default: mutmut's)")
    p.add_argument("--write", type=Path, default=None, help="also write a markdown report here")
    args = p.parse_args(argv)
    seconds = None
    if not args.no_run:
        t0 = time.perf_counter()
        log = ROOT / "mutants" / "run.log"
        log.parent.mkdir(exist_ok=True)
        print(f"mutation_score: mutmut run (log: {log}) ...", flush=True)
        with log.open("w") as fh:
            extra = ["--max-children", str(args.max_children)] if args.max_children else []
            code = subprocess.call([str(Path(sys.executable).parent / "mutmut"), "run", *extra], cwd=ROOT,
                                   stdout=fh, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - t0
        if code != 0:
            print(f"mutation_score: mutmut run exited {code}; see {log}", file=sys.stderr)
            return code
    mutants = collect()
    stale = explain(mutants)
    per = summarise(mutants)
    for m in sorted(survivors(mutants), key=lambda m: (m.file, m.function, m.key)):
        print(f"# survivor {m.file}:{m.function} [{m.verdict or 'UNEXPLAINED'}] {m.mutated}")
    for e in stale:
        print(f"# stale annotation (matches no survivor): {e['file']}:{e['function']} {e['mutated']}")
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for file, row in sorted(per.items()):
        for k, v in row.items():
            totals[group_of(file, mutants)][k] += v
        print(f"score.{group_of(file, mutants)}.{file}={score(row):.3f}")
    for group, row in sorted(totals.items()):
        for k in ("mutants", "killed", "equivalent", "harmless", "unexplained", "not_checked"):
            print(f"{group}.{k}={row[k]}")
        print(f"{group}.score={score(row):.3f}")
    if seconds is not None:
        print(f"run_minutes={seconds / 60:.1f}")
    if args.write:
        args.write.write_text(report_md(per, mutants, seconds))
        print(f"# wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
