"""Both synthetic generators stream: blocks of rows, bounded memory, same bytes as before.

The block size is part of the data (block 0 keeps the historical draw order), so
these tests shrink ``BLOCK_ROWS`` to a few hundred rows to run several blocks on
small data: the file a many-block run writes must be the rows of its blocks,
written as one-shot ``write_csv`` would, with the meta's statistics those of the file.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pfms_client.data import csv_writer
from pfms_client.data.csv_writer import CsvWriter, write_csv
from pfms_client.data.synthetic import aliexpress as gen
from pfms_client.data.synthetic import progress
from pfms_client.data.synthetic import tenrec as tgen
from pfms_client.data.synthetic.aliexpress import COLUMNS, NUMERICAL
from pfms_client.data.synthetic.params import GeneratorParams, TenrecGeneratorParams
from pfms_client.data.synthetic.stats import StreamingAUC, oracle_auc

SMALL = {"rows_train": 1500, "rows_test": 500, "seed": 5}
BLOCK = 700  # 2000 rows = blocks of 700, 700, 600; the split at 1500 falls inside block 2


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the default data do not move

# sha256 of the files the whole-array generator (before streaming, commit da45326) wrote
# for the default configs (conf/dataset/synthetic.yaml, synthetic_tenrec.yaml).
_DEFAULT_ALIEXPRESS_NL = {
    "train.csv": "a2302a53da4b2c4b31033763d8ec0ad9a7aa64733dc0c57f300d1590202bea95",
    "test.csv": "ebbaec850504cff5227d35b9f4125a3240ea5f33095f2ce937d68081fb7bee99",
    "meta.json": "b1148353318f3341cebd1f15fdc2d26899bce2bfe527df03cef04f4e7a355226",
}
_DEFAULT_TENREC_QK_VIDEO = {
    "QK-video.csv": "a42557d73c30893b31d68b39e1e47b64f68ff5e37e8c9dddca750b80ee4160fb",
    "QK-video.meta.json": "0d593be988b3ee4d4465b81972eadee59cc1799602739d9d91a1e2ce6e6bb445",
}


def test_default_scenarios_are_byte_identical_to_the_whole_array_generator(tmp_path):
    """One block (default sizes < BLOCK_ROWS) = the historical draw order, byte for byte."""
    gen.generate(tmp_path / "ali", ["NL"])  # defaults: 20,000 + 10,000 rows, seed 2024
    assert {f: _sha(tmp_path / "ali" / "NL" / f) for f in _DEFAULT_ALIEXPRESS_NL} == (
        _DEFAULT_ALIEXPRESS_NL
    )
    tgen.generate_tenrec(tmp_path / "ten", ["QK-video"])  # defaults: 30,000 rows
    assert {f: _sha(tmp_path / "ten" / f) for f in _DEFAULT_TENREC_QK_VIDEO} == (
        _DEFAULT_TENREC_QK_VIDEO
    )


# ---------------------------------------------------------------- AliExpress schema, many blocks


@pytest.fixture()
def small_blocks(monkeypatch):
    """Record the row count of every simulated block, with BLOCK_ROWS = BLOCK."""
    sizes: list[int] = []
    for module in (gen, tgen):
        monkeypatch.setattr(module, "BLOCK_ROWS", BLOCK)
        real = module._simulate_block

        def recording(rng, n, *args, _real=real):
            sizes.append(n)
            return _real(rng, n, *args)

        monkeypatch.setattr(module, "_simulate_block", recording)
    return sizes


def test_many_blocks_write_the_rows_of_the_blocks_with_correct_meta(tmp_path, small_blocks):
    meta = gen.generate_scenario(tmp_path, "NL", **SMALL)
    assert small_blocks == [700, 700, 600]  # memory: one block at a time, never all rows
    small_blocks.clear()
    arrays = gen.simulate_scenario("NL", GeneratorParams(**SMALL))
    assert small_blocks == [700, 700, 600]
    decimals = [6 if c in NUMERICAL else None for c in COLUMNS]
    for part in ("train", "test"):
        cols = arrays.part(part)
        write_csv(tmp_path / f"{part}.csv", COLUMNS, [cols[c] for c in COLUMNS], decimals)
        assert (tmp_path / "NL" / f"{part}.csv").read_bytes() == (
            tmp_path / f"{part}.csv"
        ).read_bytes()
        df = pd.read_csv(tmp_path / "NL" / f"{part}.csv")
        assert len(df) == SMALL[f"rows_{part}"]
        assert meta[part]["clicks"] == int(df["click"].sum())
        assert meta[part]["ctcvr"] == round(df["conversion"].mean(), 6)
    test, test_p = arrays.part("test"), arrays.part("test", arrays.probabilities)
    assert meta["oracle_auc_test"] == {
        "ctr": oracle_auc(test["click"], test_p["click"]),
        "ctcvr": oracle_auc(test["conversion"], test_p["conversion"]),
    }
    assert "oracle_auc_test_max_error" not in meta  # exact below AUC_EXACT_ROWS
    # search ids continue across blocks: one run of ids, each search a contiguous group
    sid = arrays.columns["search_id"]
    assert np.all(np.diff(sid) >= 0) and np.all(np.diff(sid) <= 1)
    # block 0's parameters hold for every block: one site code, ids within the windows
    assert np.unique(arrays.columns["categorical_1"]).size == 1


def test_same_seed_same_bytes_over_many_blocks_and_full_blocks_do_not_depend_on_the_total(
    tmp_path, small_blocks
):
    gen.generate_scenario(tmp_path / "a", "ES", **SMALL)
    gen.generate_scenario(tmp_path / "b", "ES", **SMALL)
    for f in ("train.csv", "test.csv", "meta.json"):
        assert (tmp_path / "a" / "ES" / f).read_bytes() == (tmp_path / "b" / "ES" / f).read_bytes()
    longer = gen.simulate_scenario("ES", GeneratorParams(**{**SMALL, "rows_test": 900}))
    short = gen.simulate_scenario("ES", GeneratorParams(**SMALL))
    full = 2 * BLOCK  # blocks 0 and 1 are complete in both
    for c in COLUMNS:
        assert np.array_equal(longer.columns[c][:full], short.columns[c][:full]), c
    assert not np.array_equal(longer.columns["numerical_1"][full:2000], short.columns["numerical_1"][full:])
    assert longer.targets == short.targets


def test_a_crash_mid_stream_publishes_nothing_and_keeps_the_old_scenario(
    tmp_path, small_blocks, monkeypatch
):
    gen.generate_scenario(tmp_path, "NL", **SMALL)
    before = {p.name: p.read_bytes() for p in (tmp_path / "NL").iterdir()}
    real = gen.simulate_blocks

    def crashing(scenario, params):
        blocks = real(scenario, params)
        yield next(blocks)
        yield next(blocks)
        raise OSError("disk full")

    monkeypatch.setattr(gen, "simulate_blocks", crashing)
    with pytest.raises(OSError, match="disk full"):
        gen.generate_scenario(tmp_path, "NL", **{**SMALL, "seed": 9})
    assert {p.name: p.read_bytes() for p in (tmp_path / "NL").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".meta.lock", "NL", "meta.json"]
    with pytest.raises(OSError, match="disk full"):
        gen.generate_scenario(tmp_path / "fresh", "NL", **SMALL)
    assert list((tmp_path / "fresh").iterdir()) == []


# ---------------------------------------------------------------- Tenrec schema, many blocks


def test_tenrec_many_blocks_meta_matches_the_file(tmp_path, small_blocks):
    knobs = {"rows": 2000, "seed": 5}
    meta = tgen.generate_tenrec(tmp_path, ["QK-video"], **knobs)["QK-video"]
    assert small_blocks == [700, 700, 600]
    df = pd.read_csv(tmp_path / "QK-video.csv")
    arrays = tgen.simulate_tenrec_scenario("QK-video", TenrecGeneratorParams(**knobs))
    for c in tgen.COLUMNS:
        assert np.array_equal(df[c].to_numpy(), arrays.columns[c]), c
    assert meta["users"] == df["user_id"].nunique() and meta["items"] == df["item_id"].nunique()
    assert meta["rates"]["click"] == round(df["click"].mean(), 6)
    assert meta["rates"]["like_given_click"] == round(df.loc[df.click == 1, "like"].mean(), 6)
    assert meta["oracle_auc"]["like"] == oracle_auc(
        arrays.columns["like"], arrays.probabilities["like"]
    )
    assert json.loads((tmp_path / "QK-video.meta.json").read_text()) == meta


def test_tenrec_crash_mid_stream_leaves_the_old_file_and_sidecar(tmp_path, small_blocks, monkeypatch):
    tgen.generate_tenrec(tmp_path, ["QB-video"], rows=2000, seed=5)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = tgen.simulate_tenrec_blocks

    def crashing(scenario, params):
        blocks = real(scenario, params)
        yield next(blocks)
        raise OSError("disk full")

    monkeypatch.setattr(tgen, "simulate_tenrec_blocks", crashing)
    with pytest.raises(OSError, match="disk full"):
        tgen.generate_tenrec(tmp_path, ["QB-video"], rows=2000, seed=6)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ---------------------------------------------------------------- CSV writer


def test_csv_writer_bytes_do_not_depend_on_block_or_chunk_sizes(monkeypatch):
    rng = np.random.default_rng(3)
    n = 1000
    floats = np.concatenate([rng.random(n - 6), [0.0, 1.0, 0.25, 1e-6, 0.1000004, 0.9999996]])
    cols = [rng.integers(0, 10**12, n), floats, floats[::-1], rng.integers(0, 40, n), floats * 7]
    decimals = [None, 6, 6, None, 3]
    header = ["id", "a", "b", "k", "big"]

    def written(blocks: list[int]) -> bytes:
        fh = io.BytesIO()
        writer = CsvWriter(fh, header, decimals)
        for lo, hi in zip([0, *blocks], [*blocks, n]):
            writer.write([c[lo:hi] for c in cols])
        return fh.getvalue()

    whole = written([])
    assert written([1, 2, 500, 999]) == whole
    monkeypatch.setattr(csv_writer, "_CHUNK_ROWS", 7)
    assert written([333]) == whole
    lines = whole.decode().splitlines()
    assert lines[0] == "id,a,b,k,big" and len(lines) == n + 1
    tail = [line.split(",") for line in lines[-6:]]
    assert [t[1] for t in tail] == ["0", "1", "0.25", "0.000001", "0.1", "1"]
    assert [t[4] for t in tail] == ["0", "7", "1.75", "0", "0.7", "7"]
    assert [int(t[0]) for t in tail] == list(cols[0][-6:])


def test_csv_writer_rejects_negative_or_non_finite_values():
    with pytest.raises(ValueError, match="negative"):
        CsvWriter(io.BytesIO(), ["a"], [None]).write([np.array([1, -2])])
    with pytest.raises(ValueError, match="finite"):
        CsvWriter(io.BytesIO(), ["a"], [6]).write([np.array([0.5, np.nan])])


# ---------------------------------------------------------------- streaming AUC


def test_streaming_auc_is_exact_up_to_the_limit_and_bounded_beyond():
    rng = np.random.default_rng(0)
    n = 60_000
    logit = rng.normal(-2, 1.5, n)
    p = 1 / (1 + np.exp(-logit))
    y = (rng.random(n) < p).astype(np.int64)
    exact = oracle_auc(y, p)
    chunked = StreamingAUC(exact_rows=n, bins=2**20)
    for lo in range(0, n, 7000):
        chunked.add(y[lo : lo + 7000], p[lo : lo + 7000])
    assert chunked.exact and chunked.value() == exact and chunked.error_bound() == 0.0
    hist = StreamingAUC(exact_rows=10_000, bins=2**20)
    for lo in range(0, n, 7000):
        hist.add(y[lo : lo + 7000], p[lo : lo + 7000])
    assert not hist.exact
    assert 0 < hist.error_bound() < 1e-4
    assert abs(hist.value() - exact) <= hist.error_bound() + 1e-4  # + rounding to 4 decimals
    coarse = StreamingAUC(exact_rows=0, bins=16)
    coarse.add(y, p)
    assert coarse.error_bound() > 1e-3  # coarse bins: the bound says so
    assert abs(coarse.value() - exact) <= coarse.error_bound() + 1e-4
    assert StreamingAUC(exact_rows=0, bins=8).value() is None


# ---------------------------------------------------------------- progress line


def test_progress_line_only_for_long_runs(tmp_path, capsys, monkeypatch):
    gen.generate_scenario(tmp_path / "quiet", "NL", **SMALL)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress, "_EVERY_S", 0.0)
    gen.generate_scenario(tmp_path / "loud", "NL", **SMALL)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pfms-generate: NL 2,000/2,000 rows (100%)")
    assert "rows/s" in err[-1] and "done in" in err[-1]
