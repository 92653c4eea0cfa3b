"""pfms-score --export: a scenario's model as TorchScript with a manifest, loaded by a plain
torch + numpy process (no pfms) that reproduces pfms-score's probabilities."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import inprocess_overrides, run_inprocess
from pfms_client.config import load_config
from pfms_client.data.settings import DatasetSettings
from pfms_client.scoring import main

TINY = ["num_rounds=1", "eval.splits=[test]", "dataset.scenarios=[NL,ES]", "dataset.numeric_transform=standardize",
        "dataset.generator.rows_train=3000", "dataset.generator.rows_test=1500"]

# Runs in a fresh interpreter: the manifest is all it knows about pfms.
PLAIN_SCORER = textwrap.dedent("""
    import csv, json, sys
    from pathlib import Path
    import numpy as np
    import torch

    folder, rows, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    manifest = json.loads((folder / "manifest.json").read_text())
    cat_in, num_in = manifest["inputs"]
    with rows.open(newline="") as fh:
        table = list(csv.DictReader(fh))
    x_cat = np.zeros((len(table), len(cat_in["columns"])), dtype=np.int64)
    for f, col in enumerate(cat_in["columns"]):
        vocab = np.load(folder / cat_in["vocab_files"][col])
        raw = np.array([int(r[col]) for r in table], dtype=np.int64)
        pos = np.minimum(np.searchsorted(vocab, raw), max(len(vocab) - 1, 0))
        x_cat[:, f] = np.where(len(vocab) and vocab[pos] == raw, pos + 1, 0) if len(vocab) else 0
    x = np.array([[float(r[c]) for c in num_in["columns"]] for r in table], dtype=np.float64)
    x = x.astype(np.float32)
    if num_in["transform"] == "standardize":
        x = ((x.astype(np.float64) - np.array(num_in["mean"])) / np.array(num_in["std"])).astype(np.float32)
    model = torch.jit.load(str(folder / manifest["model_file"]))
    with torch.no_grad():
        p = model(torch.from_numpy(x_cat), torch.from_numpy(np.ascontiguousarray(x))).numpy()
    assert p.dtype == np.float32 and p.shape == (len(table), len(manifest["output"]["columns"]))
    np.save(out, p)
    print(sorted(m for m in sys.modules if m.startswith("pfms")))
""")


@pytest.fixture(scope="module")
def exported(pfms_home, tmp_path_factory):
    overrides = inprocess_overrides(pfms_home, *TINY)
    root = tmp_path_factory.mktemp("export")
    run_inprocess(overrides, root / "run")
    assert main([str(root / "run"), "--export", str(root / "export")]) == 0
    settings = DatasetSettings.from_config(load_config(overrides).dataset)
    return root, {s: settings.test_path(s) for s in settings.scenarios}


def test_the_manifest_describes_inputs_outputs_and_vocabularies(exported):
    root, _ = exported
    for scenario in ("NL", "ES"):
        folder = root / "export" / scenario
        manifest = json.loads((folder / "manifest.json").read_text())
        cat_in, num_in = manifest["inputs"]
        assert manifest["kind"] == "torchscript" and manifest["scenario"] == scenario
        assert cat_in["name"] == "x_cat" and cat_in["dtype"] == "int64"
        assert cat_in["columns"] == [f"categorical_{i}" for i in range(1, 17)]
        assert num_in["name"] == "x_num" and num_in["dtype"] == "float32"
        assert num_in["columns"] == [f"numerical_{i}" for i in range(1, 64)]
        assert num_in["transform"] == "standardize" and len(num_in["mean"]) == len(num_in["std"]) == 63
        assert manifest["output"]["columns"] == ["ctr", "ctcvr"]
        for col, rel in cat_in["vocab_files"].items():
            vocab = np.load(folder / rel)
            assert vocab.dtype == np.int64 and (np.diff(vocab) > 0).all()


@pytest.mark.parametrize("scenario", ["NL", "ES"])
def test_a_plain_torch_process_reproduces_pfms_score(exported, tmp_path, scenario):
    root, tests = exported
    scored = tmp_path / "scores.parquet"
    assert main([str(root / "run"), "--scenario", scenario, "--input", str(tests[scenario]),
                 "--output", str(scored)]) == 0
    script = tmp_path / "plain.py"
    script.write_text(PLAIN_SCORER)
    proc = subprocess.run([sys.executable, "-I", str(script), str(root / "export" / scenario),
                           str(tests[scenario]), str(tmp_path / "p.npy")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"  # no pfms module was imported
    plain = np.load(tmp_path / "p.npy")
    table = pq.read_table(scored)
    ours = np.stack([table["p_ctr"].to_numpy(), table["p_ctcvr"].to_numpy()], axis=1)
    assert plain.shape == ours.shape == (1500, 2)
    np.testing.assert_allclose(plain, ours, rtol=0, atol=1e-5)
    assert np.abs(plain - ours).max() < 1e-5 and ours.std() > 0
