"""A scenario's trained model for a serving stack: TorchScript plus a manifest, no pfms needed.

``pfms-score RUN_DIR --export DIR`` writes, per scenario, ``DIR/<scenario>/``:
``model.pt`` (TorchScript: ``x_cat`` int64 [N, F] and ``x_num`` float32 [N, D] ->
probabilities float32 [N, T]), ``vocab/<field>.npy`` (copies of the scenario's
vocabularies) and ``manifest.json``: the input columns in order with their dtypes, how
raw values become ``x_cat``/``x_num`` (vocabulary lookup, numeric transform with its
mean/std), the task names in output order, and where the model came from.

Why TorchScript and not ONNX: it needs nothing beyond torch (``torch.jit.load`` in
Python, ``torch::jit::load`` in libtorch, Triton's and TorchServe's PyTorch backends
load it), and tracing the MMoE is exact. ONNX (``onnx`` is on the package index) would
add three packages to pfms (onnx, onnxscript for torch's exporter, onnxruntime to check
the result) for the same graph; it is left for when a serving stack asks for it.
torch 2.13 marks ``torch.jit.trace`` deprecated (in favour of torch.export) but
loads and runs TorchScript as before.

The encoding stays outside the graph, in numpy, as the manifest describes it: it is a
table lookup a serving stack does in its own feature code.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data.store import VOCAB_DIR
from .trained_model import TrainedModel, TrainedModelError, load_trained, scenarios_with_checkpoints

EXPORT_FORMAT = 1
MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"
TRACE_ROWS = 2  # rows of the example input the model is traced with (any N works afterwards)


def _probabilities_module(model: Any) -> Any:
    """The MMoE (a copy) with a sigmoid on its logits: what pfms-score writes. Its experts'
    ModuleDict key ``global`` is a keyword of TorchScript's serialized code (the saved
    model would not load), so the copy keeps them under ``global_experts``; the MMoE's
    own forward runs unchanged while it is traced."""
    import copy

    import torch

    class TraceableExperts(torch.nn.Module):
        def __init__(self, experts: Any) -> None:
            super().__init__()
            self.names = {name: f"{name}_experts" for name in experts}
            for name, group in experts.items():
                setattr(self, self.names[name], group)

        def __getitem__(self, name: str) -> Any:
            return getattr(self, self.names[name])

    class Probabilities(torch.nn.Module):
        def __init__(self, mmoe: Any) -> None:
            super().__init__()
            self.mmoe = mmoe

        def forward(self, x_cat: torch.Tensor, x_num: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.mmoe(x_cat, x_num))

    mmoe = copy.deepcopy(model)
    mmoe.experts = TraceableExperts(mmoe.experts)
    return Probabilities(mmoe).eval()


def manifest(trained: TrainedModel) -> dict[str, Any]:
    import torch

    enc = trained.encoding
    schema = enc.schema
    numeric = enc.record["numeric"]
    return {
        "format": EXPORT_FORMAT,
        "kind": "torchscript",
        "model_file": MODEL_FILE,
        "scenario": trained.scenario,
        "dataset": enc.record["dataset"],
        "torch_version": torch.__version__,
        "inputs": [
            {
                "name": "x_cat", "dtype": "int64", "shape": ["N", len(schema.categorical)],
                "columns": list(schema.categorical),
                "raw_dtype": "int64",
                "encoding": "index i + 1 where vocab[i] == raw id (vocab: the column's file, sorted int64 ids: "
                            "a binary search), else 0 (out of vocabulary)",
                "vocab_files": {c: f"{VOCAB_DIR}/{c}.npy" for c in schema.categorical},
            },
            {
                "name": "x_num", "dtype": "float32", "shape": ["N", len(schema.numerical)],
                "columns": list(schema.numerical),
                "raw_dtype": "float32 (the value read as float64, rounded to float32)",
                "transform": numeric["transform"],
                "formula": "x" if numeric["scaler"] is None
                else "float32((float64(x) - mean) / std), mean and std per column",
                "mean": None if numeric["scaler"] is None else numeric["scaler"]["mean"],
                "std": None if numeric["scaler"] is None else numeric["scaler"]["std"],
            },
        ],
        "output": {"name": "probabilities", "dtype": "float32", "shape": ["N", len(enc.task_names)],
                   "columns": list(enc.task_names)},
        "id_columns": list(schema.id_columns),
        "ignore_columns": list(schema.ignore_columns),
        "source": {"checkpoint": str(trained.checkpoint), "encoding_fingerprint": enc.record["fingerprint"]},
    }


def export_scenario(trained: TrainedModel, dest: Path) -> Path:
    """``dest`` (replaced): model.pt, vocab/, manifest.json."""
    import torch

    enc = trained.encoding
    n_cat, n_num = len(enc.schema.categorical), len(enc.schema.numerical)
    example = (torch.zeros(TRACE_ROWS, n_cat, dtype=torch.int64), torch.zeros(TRACE_ROWS, n_num, dtype=torch.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace: see the module docstring
        traced = torch.jit.trace(_probabilities_module(trained.model), example, check_trace=False)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / VOCAB_DIR).mkdir(parents=True)
    traced.save(str(dest / MODEL_FILE))
    for field in enc.schema.categorical:
        shutil.copyfile(enc.folder / VOCAB_DIR / f"{field}.npy", dest / VOCAB_DIR / f"{field}.npy")
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest(trained), indent=1))
    return dest


def export_run(run_dir: Path, out_dir: Path, scenarios: Sequence[str] | None = None) -> list[Path]:
    """Export the named scenarios (default: every one with a checkpoint) into ``out_dir/<scenario>``."""
    if not Path(run_dir).is_dir():
        raise TrainedModelError(f"{run_dir}: run folder not found")
    wanted = list(scenarios) if scenarios else scenarios_with_checkpoints(Path(run_dir))
    if not wanted:
        raise TrainedModelError(f"{run_dir}: no checkpoints/<scenario>.pt to export")
    return [export_scenario(load_trained(Path(run_dir), s), Path(out_dir) / s) for s in wanted]
