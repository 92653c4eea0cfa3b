"""Turn one scenario's validated frames into tensors, once, before training.

The validation split is carved out of the train file first, and only the
remaining train part fits the vocabularies and the numeric scaler, so neither
val nor test statistics leak into the encoders.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from .encoding import CategoricalVocab, NumericScaler, validation_indices
from .schema import DatasetSchema
from .settings import DatasetSettings


__all__ = ["ScenarioData", "TensorSplit", "build_scenario_data", "task_labels", "validation_indices"]


@dataclass(frozen=True)
class TensorSplit:
    """Contiguous tensors of one split; batches are slices or index selections."""

    x_cat: torch.Tensor  # int64 [N, F], 0 = out-of-vocabulary
    x_num: torch.Tensor  # float32 [N, Dn]
    y: torch.Tensor  # float32 [N, T], column t = task_names[t]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_tasks(self) -> int:
        return int(self.y.shape[1])

    def select(self, index: torch.Tensor | slice) -> TensorSplit:
        return TensorSplit(self.x_cat[index], self.x_num[index], self.y[index])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_cat, x_num, y) of the rows ``idx`` (the trainer's one way to read rows)."""
        return self.x_cat[idx], self.x_num[idx], self.y[idx]

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.x_cat[start:stop], self.x_num[start:stop], self.y[start:stop]

    def labels(self) -> np.ndarray:
        return self.y.numpy()

    def positive_rates(self) -> list[float]:
        return [float(r) for r in self.y.double().mean(dim=0)] if len(self) else []

    def in_memory(self) -> TensorSplit:
        return self


@dataclass(frozen=True)
class ScenarioData:
    """Everything a client needs to build its model and train/evaluate on one scenario."""

    scenario: str
    train: TensorSplit  # or batches.StoreSplit (memory-mapped): the same reading methods
    val: TensorSplit
    test: TensorSplit
    field_dims: list[int]  # embedding rows per categorical field, OOV slot 0 included
    num_numerical: int
    task_names: list[str]
    categorical_names: list[str]
    numerical_names: list[str]
    # Per categorical field, its kept raw ids, sorted (index i + 1 = ids[i], 0 = OOV): how a
    # shared-id field maps its local indices to common hash buckets without sending ids.
    vocabularies: tuple[np.ndarray, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @property
    def positive_rates(self) -> list[float]:
        """Train-part positive rate per task, e.g. to start an output bias at logit(rate)."""
        return self.train.positive_rates()

    def in_memory(self) -> ScenarioData:
        """Every split read into contiguous tensors (a store's splits are mapped until then)."""
        return replace(self, train=self.train.in_memory(), val=self.val.in_memory(), test=self.test.in_memory())


def task_labels(df: pd.DataFrame, schema: DatasetSchema) -> np.ndarray:
    """[N, T] float32; task t is 1 where all of its ``all_of`` labels are 1."""
    y = np.empty((len(df), schema.num_tasks), dtype=np.float32)
    for t, task in enumerate(schema.tasks):
        y[:, t] = np.logical_and.reduce([df[c].to_numpy() == 1 for c in task.all_of])
    return y


def build_scenario_data(
    scenario: str, train_df: pd.DataFrame, test_df: pd.DataFrame, settings: DatasetSettings
) -> ScenarioData:
    """Split val off ``train_df``, fit encoders on the rest, encode all three splits."""
    schema = settings.schema
    train_idx, val_idx = validation_indices(
        len(train_df), settings.split.val_fraction, settings.split.seed
    )
    fit_part = train_df.iloc[train_idx]
    vocabs = [
        CategoricalVocab.fit(fit_part[c].to_numpy(), settings.min_count) for c in schema.categorical
    ]
    num_cols = list(schema.numerical)
    scaler = NumericScaler.fit(
        fit_part[num_cols].to_numpy(dtype=np.float64), settings.numeric_transform
    )

    def encode(df: pd.DataFrame) -> TensorSplit:
        x_cat = np.empty((len(df), len(vocabs)), dtype=np.int64)
        for f, (col, vocab) in enumerate(zip(schema.categorical, vocabs, strict=True)):
            x_cat[:, f] = vocab.transform(df[col].to_numpy())
        x_num = scaler.transform(df[num_cols].to_numpy(dtype=np.float64)).astype(np.float32)
        return TensorSplit(
            x_cat=torch.from_numpy(np.ascontiguousarray(x_cat)),
            x_num=torch.from_numpy(np.ascontiguousarray(x_num)),
            y=torch.from_numpy(np.ascontiguousarray(task_labels(df, schema))),
        )

    return ScenarioData(
        scenario=scenario,
        train=encode(fit_part),
        val=encode(train_df.iloc[val_idx]),
        test=encode(test_df),
        field_dims=[v.size for v in vocabs],
        num_numerical=len(num_cols),
        task_names=schema.task_names,
        categorical_names=list(schema.categorical),
        numerical_names=num_cols,
        vocabularies=tuple(v.ids for v in vocabs),
    )
