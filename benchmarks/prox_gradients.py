"""How hard the proximal term pulls, per uploaded parameter group, relative to the loss.

Trains one scenario's `small` MMoE for a few epochs; each epoch stands for a round
(the anchor is reset to the epoch's starting weights). For every uploaded group
(global experts, scenario experts, each task's tower) it prints the sum over
batches and tensors of ||mu * (theta - anchor)|| divided by the same sum of
||grad BCE||. A rare task's tower has small BCE gradients, so the same mu weighs
more on it: that is what held back Tenrec's `like` task at mu = 0.01
(docs/results.md).

    python benchmarks/prox_gradients.py [--mu 0.01] [--epochs 8] [hydra overrides, e.g. dataset=synthetic_tenrec]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.nn import functional as F

from pfms_client.config import load_config
from pfms_client.data import load_scenario
from pfms_client.mmoe import build_model
from pfms_client.template import Group, classify, shared_parts, uploaded_names


def group_of(name: str) -> str:
    role = classify(name)
    return role.unit if role.group is Group.TOWER else role.group.value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mu", type=float, default=0.01)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.overrides)
    scenario = str(cfg.dataset.scenarios[0])
    data = load_scenario(cfg.dataset, scenario)
    model = build_model(cfg.model, data.field_dims, data.num_numerical, len(data.task_names), args.seed,
                        positive_rates=data.positive_rates)
    up = set(uploaded_names(model.state_dict().keys(), fedbn=cfg.strategy.fedbn, share=shared_parts(cfg.strategy)))
    params = {n: p for n, p in model.named_parameters() if n in up}
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    tr = data.train
    print(f"{cfg.dataset.name} / {scenario}, tasks {list(data.task_names)} (tower index = task index), "
          f"positive rates {[round(float(r), 4) for r in data.positive_rates]}, mu {args.mu}")
    model.train()
    for epoch in range(1, args.epochs + 1):
        anchor = {n: p.detach().clone() for n, p in params.items()}
        sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        perm = torch.randperm(tr.y.shape[0], generator=gen)
        for start in range(0, len(perm), cfg.train.batch_size):
            idx = perm[start : start + cfg.train.batch_size]
            if idx.numel() < 2:
                continue
            loss = F.binary_cross_entropy_with_logits(model(tr.x_cat[idx], tr.x_num[idx]), tr.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for n, p in params.items():
                    if p.grad is None:
                        continue
                    prox = args.mu * (p - anchor[n])
                    s = sums[group_of(n)]
                    s[0] += float(prox.norm())
                    s[1] += float(p.grad.norm())
                    p.grad += prox
            opt.step()
        print(f"epoch {epoch}: " + "  ".join(f"{g} {v[0] / v[1]:.2f}" for g, v in sorted(sums.items())))


if __name__ == "__main__":
    main()
