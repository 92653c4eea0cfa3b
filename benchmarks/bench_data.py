"""Prepare, open and stream one big scenario; compare streamed training with in-memory training.

    python benchmarks/bench_data.py --rows 2000000 [--device cuda] [--batches 300] [--dir DIR]
    python benchmarks/bench_data.py --rows 2000000 --source /work/bench-data/synthetic-10m

1. Generates one AliExpress-schema scenario (NL) of ``--rows`` train rows and
   ``--rows``/10 test rows with ``pfms-generate`` in a child process (reused when
   ``--dir`` already holds it; default benchmarks/.cache/rows<N>). With ``--source``,
   an existing scenario folder (``<source>/NL/{train,test}.csv``, only read) is used
   instead, capped at ``--rows`` rows per file (``dataset.max_rows``); the store then
   goes under ``--dir``.
2. Prepares it from scratch (pfms_client.data.prepare_scenario) in a child process,
   sampling that process's RssAnon (/proc/PID/status) every 50 ms: ``prepare_s``,
   ``prepare_rows_per_s`` (train + test rows), ``prepare_peak_anon_mib``; and its CPU
   time (user + system, all threads, from wait4): ``prepare_cpu_s``,
   ``prepare_rows_per_cpu_s``, a figure a loaded shared machine disturbs far less than
   the wall-clock rate. ``load_avg_1m`` is the machine's load average before and after.
3. In another child process: opens the store (``open_s``), draws ``--batches`` batches
   of train.batch_size rows (the trainer's seeded order) and trains the small MMoE
   on them twice per repeat, alternating which goes first: streamed from the mapped
   store, and from in-memory tensors holding exactly the rows those batches use
   (so memory stays small). ``stream_samples_per_s`` / ``memory_samples_per_s`` are
   medians over repeats, ``stream_vs_memory_ratio`` the median of the per-repeat
   ratios; ``train_peak_anon_mib`` is that process's peak RssAnon (anonymous memory:
   the mapped store's page cache does not count).

Prints one key=value per line. Targets (2 cores): peaks <= 1024 MiB, open_s <= 1,
ratio >= 0.9, prepare_rows_per_s >= 200000.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from pfms_client.timing import rss_anon_kib  # RssAnon of the child process we sample

REPO = Path(__file__).resolve().parent.parent
SAMPLE_S = 0.05
SCENARIO = "NL"


def run_sampled(cmd: list[str]) -> tuple[str, float, int, float]:
    """Run ``cmd``; (stdout, seconds, peak RssAnon KiB sampled every 50 ms, CPU seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    peak, out = 0, []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    reader.start()
    while True:
        peak = max(peak, rss_anon_kib(proc.pid))
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(SAMPLE_S)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    if proc.returncode != 0:
        raise SystemExit(f"bench_data: {cmd[:4]}... failed with exit code {proc.returncode}")
    return "".join(out), seconds, peak, usage.ru_utime + usage.ru_stime


SOURCE: Path | None = None  # --source: an existing scenario folder, only read
MAX_ROWS: int | None = None


def overrides(folder: Path) -> list[str]:
    root = SOURCE if SOURCE is not None else folder
    extra = [f"dataset.max_rows={MAX_ROWS}"] if MAX_ROWS is not None else []
    return [f"dataset.root={root}", f"dataset.scenarios=[{SCENARIO}]", "dataset.generator=null",
            f"dataset.store_dir={folder / 'prepared'}", *extra]


# ---------------------------------------------------------------- child: prepare
def child_prepare(folder: Path) -> None:
    from pfms_client.config import load_config
    from pfms_client.data import prepare_scenario
    from pfms_client.data.store import read_manifest

    import pandas  # noqa: F401  imports are paid once per process: not part of the rate
    import pyarrow.csv  # noqa: F401

    cfg = load_config(overrides(folder))
    shutil.rmtree(folder / "prepared", ignore_errors=True)
    t0 = time.perf_counter()
    store = prepare_scenario(cfg.dataset, SCENARIO)
    seconds = time.perf_counter() - t0
    rows = read_manifest(store)["rows"]
    print(json.dumps({"seconds": seconds, "rows": rows}))


# ---------------------------------------------------------------- child: train
def child_train(folder: Path, device: str, batches: int, repeats: int) -> None:
    import numpy as np
    import torch
    from torch.nn import functional as F

    from pfms_client.config import load_config
    from pfms_client.data.batches import batch_indices
    from pfms_client.data.store import open_store, store_path
    from pfms_client.data.settings import DatasetSettings
    from pfms_client.data.tensors import TensorSplit
    from pfms_client.mmoe import build_model
    from pfms_client.trainer import resolve_device

    cfg = load_config(overrides(folder))
    settings = DatasetSettings.from_config(cfg.dataset)
    if cfg.train.num_threads:
        torch.set_num_threads(int(cfg.train.num_threads))
    t0 = time.perf_counter()
    data = open_store(store_path(settings, SCENARIO), settings, SCENARIO)
    open_s = time.perf_counter() - t0
    stream = data.train
    bs = int(cfg.train.batch_size)
    plan = list(batch_indices(len(stream), bs, torch.Generator().manual_seed(7), steps=batches))
    used = np.unique(torch.cat(plan).numpy())
    x_cat, x_num, y = stream.take(used)
    memory = TensorSplit(torch.from_numpy(x_cat.astype(np.int64)), torch.from_numpy(x_num),
                         torch.from_numpy(y.astype(np.float32)))
    compact = [torch.from_numpy(np.searchsorted(used, idx.numpy())) for idx in plan]
    dev = resolve_device(device)

    def run(split, order) -> float:
        torch.manual_seed(0)
        model = build_model(cfg.model, data.field_dims, data.num_numerical, len(data.task_names), 0).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=float(cfg.train.lr))
        model.train()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        rows = 0
        for idx in order:
            x_cat, x_num, y = (v.to(dev, non_blocking=True) for v in split.batch(idx))
            loss = F.binary_cross_entropy_with_logits(model(x_cat, x_num), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rows += idx.numel()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return rows / (time.perf_counter() - t)

    run(memory, compact[: max(1, len(compact) // 10)])  # warm-up: allocator, kernels
    s_rates, m_rates, ratios = [], [], []
    for r in range(repeats):
        if r % 2 == 0:
            s, m = run(stream, plan), run(memory, compact)
        else:
            m, s = run(memory, compact), run(stream, plan)
        s_rates.append(s)
        m_rates.append(m)
        ratios.append(s / m)
    print(json.dumps({"open_s": open_s, "stream": float(np.median(s_rates)), "memory": float(np.median(m_rates)),
                      "ratio": float(np.median(ratios)), "ratios": ratios, "device": str(dev)}))


# ---------------------------------------------------------------- parent
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, required=True, help="train rows of the scenario")
    p.add_argument("--test-rows", type=int, default=None, help="test rows (default rows/10)")
    p.add_argument("--device", default="cpu", help="train device: cpu, cuda, cuda:<i>, auto")
    p.add_argument("--batches", type=int, default=300, help="batches trained per run")
    p.add_argument("--repeats", type=int, default=3, help="stream/memory pairs (alternating order)")
    p.add_argument("--dir", default=None, help="data folder (default benchmarks/.cache/rows<N>)")
    p.add_argument("--source", default=None,
                   help="existing scenario folder (<source>/NL/*.csv), only read; capped at --rows rows per file")
    p.add_argument("--child", choices=["prepare", "train"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    test_rows = args.test_rows if args.test_rows is not None else max(args.rows // 10, 100)
    global SOURCE, MAX_ROWS
    if args.source is not None:
        SOURCE, MAX_ROWS = Path(args.source).resolve(), args.rows
        default = REPO / "benchmarks" / ".cache" / f"source-{SOURCE.name}-rows{args.rows}"
    else:
        default = REPO / "benchmarks" / ".cache" / f"rows{args.rows}-test{test_rows}"
    folder = Path(args.dir or default).resolve()
    if args.child == "prepare":
        child_prepare(folder)
        return 0
    if args.child == "train":
        child_train(folder, args.device, args.batches, args.repeats)
        return 0

    load_before = os.getloadavg()[0]
    if SOURCE is not None:
        folder.mkdir(parents=True, exist_ok=True)
        if not (SOURCE / SCENARIO / "test.csv").is_file():
            raise SystemExit(f"bench_data: {SOURCE / SCENARIO / 'test.csv'} not found")
    elif not (folder / SCENARIO / "test.csv").is_file():
        t0 = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "pfms-generate"), "--out", str(folder), "--scenarios",
                        SCENARIO, "--rows-train", str(args.rows), "--rows-test", str(test_rows)],
                       check=True, stdout=subprocess.DEVNULL, cwd=REPO)
        print(f"generate_s={time.perf_counter() - t0:.1f}", flush=True)
    me = [sys.executable, str(Path(__file__).resolve()), "--rows", str(args.rows), "--test-rows", str(test_rows),
          "--dir", str(folder)] + (["--source", str(SOURCE)] if SOURCE is not None else [])
    out, _, peak, prep_cpu = run_sampled(me + ["--child", "prepare"])
    prep = json.loads(out.strip().splitlines()[-1])
    rows = prep["rows"]
    source_rows = rows["train"] + rows["val"] + rows["test"]
    out, _, tpeak, _ = run_sampled(me + ["--child", "train", "--device", args.device, "--batches", str(args.batches),
                                      "--repeats", str(args.repeats)])
    train = json.loads(out.strip().splitlines()[-1])
    lines = {
        "rows": rows["train"] + rows["val"],
        "test_rows": rows["test"],
        "device": train["device"],
        "prepare_s": f"{prep['seconds']:.3f}",
        "prepare_rows_per_s": f"{source_rows / prep['seconds']:.0f}",
        "prepare_peak_anon_mib": f"{peak / 1024:.0f}",
        "prepare_cpu_s": f"{prep_cpu:.3f}",
        "prepare_rows_per_cpu_s": f"{source_rows / prep_cpu:.0f}",
        "open_s": f"{train['open_s']:.4f}",
        "train_peak_anon_mib": f"{tpeak / 1024:.0f}",
        "stream_samples_per_s": f"{train['stream']:.0f}",
        "memory_samples_per_s": f"{train['memory']:.0f}",
        "stream_vs_memory_ratio": f"{train['ratio']:.3f}",
        "ratio_min_max": f"{min(train['ratios']):.3f}-{max(train['ratios']):.3f}",
        "load_avg_1m": f"{load_before:.1f}-{os.getloadavg()[0]:.1f}",
        "cpus": len(os.sched_getaffinity(0)),
    }
    for k, v in lines.items():
        print(f"{k}={v}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
