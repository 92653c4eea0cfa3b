"""Throughput of the pfms local trainer against a bare PyTorch loop.

Both train the same `small` MMoE on the same in-memory tensors of one synthetic
scenario with the same objective (mean BCE over tasks + proximal term) and Adam;
the bare loop is the minimum a PyTorch user would write. Prints samples/s of each
and their ratio (target >= 0.95). Runs alternate (and which goes first alternates);
the ratio is the median over back-to-back pairs, so machine drift cancels.

    python benchmarks/bench_trainer.py [--epochs 2] [--repeats 5] [hydra overrides...]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
from torch.nn import functional as F

from pfms_client.config import load_config
from pfms_client.data import load_scenario
from pfms_client.mmoe import build_model
from pfms_client.template import shared_parts, uploaded_names
from pfms_client.trainer import TrainConfig, train_local


def bare_loop(model, data, anchor, cfg: TrainConfig, seed: int) -> float:
    """Hand-written loop: returns samples/s."""
    params = dict(model.named_parameters())
    prox = [(params[n], a) for n, a in anchor.items()]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n, rows = data.y.shape[0], 0
    model.train()
    t0 = time.perf_counter()
    for _ in range(cfg.local_epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            if idx.numel() < 2:
                continue
            loss = F.binary_cross_entropy_with_logits(model(data.x_cat[idx], data.x_num[idx]), data.y[idx])
            if cfg.mu > 0:
                loss = loss + 0.5 * cfg.mu * sum(((p - a) ** 2).sum() for p, a in prox)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rows += idx.numel()
    return rows / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scenario", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    home = tempfile.mkdtemp(prefix="pfms-bench-")
    cfg = load_config([f"paths.home={home}", f"train.local_epochs={args.epochs}", *args.overrides])
    scenario = args.scenario or str(cfg.dataset.scenarios[0])
    data = load_scenario(cfg.dataset, scenario)
    tcfg = TrainConfig.from_config(cfg.train)
    base = build_model(cfg.model, data.field_dims, data.num_numerical, len(data.task_names), int(cfg.seed))
    names = uploaded_names(base.state_dict(), fedbn=cfg.strategy.fedbn, share=shared_parts(cfg.strategy))
    params = dict(base.named_parameters())
    anchor = {n: params[n].detach().clone() for n in names if n in params}

    pfms, bare = [], []
    for r in range(args.repeats + 1):  # first pair is warm-up
        m1, m2 = copy.deepcopy(base), copy.deepcopy(base)
        if r % 2:  # alternate which side goes first, so order effects cancel
            s_pfms = train_local(m1, data.train, anchor, tcfg, seed=r)["samples_per_s"]
            s_bare = bare_loop(m2, data.train, anchor, tcfg, seed=r)
        else:
            s_bare = bare_loop(m2, data.train, anchor, tcfg, seed=r)
            s_pfms = train_local(m1, data.train, anchor, tcfg, seed=r)["samples_per_s"]
        if r:
            pfms.append(s_pfms)
            bare.append(s_bare)
    p, b = statistics.median(pfms), statistics.median(bare)
    ratios = [x / y for x, y in zip(pfms, bare)]
    print(f"scenario {scenario}: {data.train.y.shape[0]} train rows, batch {tcfg.batch_size}, "
          f"{args.epochs} epochs, mu {tcfg.mu}, torch threads {torch.get_num_threads()}")
    print(f"pfms trainer : {p:10.0f} samples/s  (runs: {', '.join(f'{x:.0f}' for x in pfms)})")
    print(f"bare PyTorch : {b:10.0f} samples/s  (runs: {', '.join(f'{x:.0f}' for x in bare)})")
    print(f"ratio        : {statistics.median(ratios):10.3f}  median of back-to-back pairs "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}; target >= 0.95)")


if __name__ == "__main__":
    main()
