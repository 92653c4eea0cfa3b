"""MMoE with the PF-MSMTrec parameter template (global, scenario and task experts).

Module names follow ``pfms_client.template`` so the server can group tensors by
name alone. Gate t mixes only G + S + T_t, so task t's loss never reaches the
experts of another task.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .template import ExpertTemplate, shared_table_name


class Block(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Dropout (the spec's expert/tower layer)."""

    def __init__(self, d_in: int, d_out: int, dropout: float, bn_momentum: float) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.bn = nn.BatchNorm1d(d_out, momentum=bn_momentum)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.bn(self.linear(x))))


class MLP(nn.Module):
    def __init__(self, d_in: int, hidden: Sequence[int], dropout: float, bn_momentum: float) -> None:
        super().__init__()
        dims = [d_in, *hidden]
        self.layers = nn.Sequential(
            *(Block(a, b, dropout, bn_momentum) for a, b in zip(dims[:-1], dims[1:]))
        )
        self.d_out = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Tower(nn.Module):
    def __init__(self, d_in: int, hidden: Sequence[int], dropout: float, bn_momentum: float) -> None:
        super().__init__()
        self.mlp = MLP(d_in, hidden, dropout, bn_momentum)
        self.out = nn.Linear(self.mlp.d_out, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(z)).squeeze(-1)


class MMoE(nn.Module):
    """Returns one logit per task; the sigmoid lives in the loss and in predict."""

    def __init__(
        self,
        field_dims: Sequence[int],
        num_numerical: int,
        template: ExpertTemplate,
        embed_dim: int,
        expert_hidden: Sequence[int],
        tower_hidden: Sequence[int],
        dropout: float,
        bn_momentum: float,
        shared_buckets: Mapping[str, Any] | None = None,
        shared_rows: int = 0,
        field_names: Sequence[str] | None = None,
        shared_residual: bool = False,
    ) -> None:
        super().__init__()
        if not expert_hidden:
            raise ValueError("model.expert_hidden needs at least one layer")
        self.template = template
        num_fields = len(field_dims) + (1 if num_numerical > 0 else 0)
        if num_fields == 0:
            raise ValueError("the schema declares no feature columns")
        d_in = num_fields * embed_dim

        def expert() -> MLP:
            return MLP(d_in, expert_hidden, dropout, bn_momentum)

        # Shared (uploadable) parts are built first so that, for one seed, their
        # initial values do not depend on the scenario's vocabulary sizes.
        self.experts = nn.ModuleDict(
            {
                "global": nn.ModuleList(expert() for _ in range(template.n_global)),
                "scenario": nn.ModuleList(expert() for _ in range(template.n_scenario)),
                "task": nn.ModuleList(
                    nn.ModuleList(expert() for _ in range(template.n_task))
                    for _ in range(template.num_tasks)
                ),
            }
        )
        d_expert = expert_hidden[-1]
        self.towers = nn.ModuleList(
            Tower(d_expert, tower_hidden, dropout, bn_momentum) for _ in range(template.num_tasks)
        )
        self.gates = nn.ModuleList(
            nn.Linear(d_in, template.gate_width) for _ in range(template.num_tasks)
        )
        shared_buckets = dict(shared_buckets or {})
        names = list(field_names) if field_names is not None else [str(i) for i in range(len(field_dims))]
        self.local_cols = [i for i, f in enumerate(names) if f not in shared_buckets]
        local_dims = [int(field_dims[i]) for i in self.local_cols]
        self.embedding = nn.Embedding(max(1, sum(local_dims)), embed_dim)
        offsets = torch.tensor([0, *local_dims[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets[: len(local_dims)], persistent=False)
        self.numeric = nn.Linear(num_numerical, embed_dim) if num_numerical > 0 else None
        self.has_cat = len(field_dims) > 0
        # Shared-id fields (off unless shared_buckets is given): built last, so that with the
        # switch off nothing above changes, names, order and initial values alike.
        self.shared_fields = [f for f in names if f in shared_buckets]
        self.shared_cols = [names.index(f) for f in self.shared_fields]
        if self.shared_fields:
            self.shared_embedding = nn.ModuleDict({f: nn.Embedding(shared_rows, embed_dim) for f in self.shared_fields})
            for j, f in enumerate(self.shared_fields):
                table = torch.as_tensor(shared_buckets[f], dtype=torch.long)
                if len(table) != int(field_dims[self.shared_cols[j]]):
                    raise ValueError(f"shared field {f}: bucket map of {len(table)} indices, "
                                     f"field has {field_dims[self.shared_cols[j]]}")
                if len(table) and (int(table.min()) < 0 or int(table.max()) >= shared_rows):
                    raise ValueError(f"shared field {f}: bucket map outside [0, {shared_rows})")
                self.register_buffer(f"bucket_map_{j}", table, persistent=False)
                # Rows this model's trained batches looked up since it was built (touched_counts).
                self.register_buffer(f"touch_count_{j}", torch.zeros(shared_rows, dtype=torch.long),
                                     persistent=False)
            # strategy.shared_embeddings.residual: a local row per shared-field id, added to its
            # shared row, starting at zero (so round 1 reads the shared rows alone); never uploaded.
            self.shared_residual = None
            if shared_residual:
                dims = [int(field_dims[c]) for c in self.shared_cols]
                self.shared_residual = nn.Embedding(sum(dims), embed_dim)
                nn.init.zeros_(self.shared_residual.weight)
                self.register_buffer("residual_offsets", torch.tensor([0, *dims[:-1]], dtype=torch.long).cumsum(0),
                                     persistent=False)
            # where each field's embedding sits in [local fields..., shared fields...]
            order = self.local_cols + self.shared_cols
            self.register_buffer("field_order", torch.tensor([order.index(i) for i in range(len(names))]),
                                 persistent=False)

    def touched_counts(self) -> dict[str, torch.Tensor]:
        """Shared table name -> how many trained rows looked up each of its rows (int64 [R]):
        counted in training mode while the table takes gradients, so a frozen phase
        (FedRep's head epochs) and evaluation count nothing."""
        return {shared_table_name(f): getattr(self, f"touch_count_{j}")
                for j, f in enumerate(self.shared_fields)}

    def _embed_fields(self, x_cat: torch.Tensor) -> torch.Tensor:
        """[N, F, d] with shared fields read from their hashed tables, in field order."""
        parts = []
        if self.local_cols:
            parts.append(self.embedding(x_cat[:, self.local_cols] + self.offsets))
        for j, f in enumerate(self.shared_fields):
            table = self.shared_embedding[f]
            rows = getattr(self, f"bucket_map_{j}")[x_cat[:, self.shared_cols[j]]]
            if self.training and table.weight.requires_grad:
                counts = getattr(self, f"touch_count_{j}")
                counts += torch.bincount(rows, minlength=counts.numel())
            row = table(rows)
            if self.shared_residual is not None:
                row = row + self.shared_residual(x_cat[:, self.shared_cols[j]] + self.residual_offsets[j])
            parts.append(row.unsqueeze(1))
        return torch.cat(parts, dim=1).index_select(1, self.field_order)

    def embed(self, x_cat: torch.Tensor, x_num: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.has_cat and self.shared_fields:
            parts.append(self._embed_fields(x_cat).flatten(1))
        elif self.has_cat:
            parts.append(self.embedding(x_cat + self.offsets).flatten(1))
        if self.numeric is not None:
            parts.append(self.numeric(x_num))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def forward(self, x_cat: torch.Tensor, x_num: torch.Tensor) -> torch.Tensor:
        h0 = self.embed(x_cat, x_num)
        shared = [e(h0) for e in self.experts["global"]] + [e(h0) for e in self.experts["scenario"]]
        logits = []
        for t, (gate, tower) in enumerate(zip(self.gates, self.towers)):
            outs = torch.stack(shared + [e(h0) for e in self.experts["task"][t]], dim=1)
            weights = torch.softmax(gate(h0), dim=-1).unsqueeze(1)  # [B, 1, W]
            logits.append(tower(torch.bmm(weights, outs).squeeze(1)))
        return torch.stack(logits, dim=1)


def build_model(
    model_cfg: Mapping[str, Any],
    field_dims: Sequence[int],
    num_numerical: int,
    num_tasks: int,
    seed: int,
    positive_rates: Sequence[float] | None = None,
    shared_buckets: Mapping[str, Any] | None = None,
    shared_rows: int = 0,
    field_names: Sequence[str] | None = None,
    shared_residual: bool = False,
) -> MMoE:
    """Build the MMoE from ``conf/model``; the seed fixes the common initialisation.

    With ``model.output_bias: prior`` each tower's output bias starts at
    logit(positive rate): rare labels (CTCVR well under 1%) otherwise cost the
    first rounds just to move the bias from logit(0.5).

    ``shared_buckets`` (field name -> bucket map, pfms_client.shared_embedding) with
    ``shared_rows`` and ``field_names``: those fields read one hashed table each
    (``shared_embedding.<field>.weight``), created after every other tensor; None = today's model.
    ``shared_residual``: each of those ids also has a local row (``shared_residual.weight``,
    zeros at first) added to its shared row.
    """
    known = {"embed_dim", "template", "expert_hidden", "tower_hidden", "dropout", "bn_momentum", "output_bias"}
    unknown = set(model_cfg) - known
    if unknown:
        raise ValueError(f"model config: unknown keys {sorted(unknown)}")
    mode = str(model_cfg.get("output_bias", "zero"))
    if mode not in ("zero", "prior"):
        raise ValueError(f"model.output_bias={mode!r}: expected 'zero' or 'prior'")
    torch.manual_seed(seed)
    model = MMoE(
        field_dims=list(field_dims),
        num_numerical=num_numerical,
        template=ExpertTemplate.from_config(model_cfg["template"], num_tasks),
        embed_dim=int(model_cfg["embed_dim"]),
        expert_hidden=list(model_cfg["expert_hidden"]),
        tower_hidden=list(model_cfg["tower_hidden"]),
        dropout=float(model_cfg["dropout"]),
        bn_momentum=float(model_cfg["bn_momentum"]),
        shared_buckets=shared_buckets,
        shared_rows=shared_rows,
        field_names=field_names,
        shared_residual=shared_residual,
    )
    if mode == "prior" and positive_rates:
        with torch.no_grad():
            for tower, rate in zip(model.towers, positive_rates):
                p = min(max(float(rate), 1e-6), 1 - 1e-6)
                tower.out.bias.fill_(math.log(p / (1 - p)))
    return model
