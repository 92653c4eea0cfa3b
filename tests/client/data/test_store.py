"""The prepared store: equal to the in-memory encoding, rebuilt when it must be, atomic,
safe under concurrent preparers; streaming reads; Parquet; undecodable bytes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DATASET as CONF, FIXTURES, REPO
from pfms_client.data import DataValidationError, load_scenario, open_scenario, prepare_scenario
from pfms_client.data import store as store_mod
from pfms_client.data.batches import StoreSplit
from pfms_client.data.readers import iter_checked_chunks, read_aliexpress, read_tenrec
from pfms_client.data.readers import read_scenario
from pfms_client.data.settings import DatasetSettings
from pfms_client.data.tensors import build_scenario_data

ALI_DIR = FIXTURES / "aliexpress_sample"


def ali_cfg(store: Path, root: Path = ALI_DIR, **extra) -> dict:
    node = OmegaConf.create({"seed": 0, "paths": {"data": "/unused"}})
    node.dataset = OmegaConf.load(CONF / "aliexpress.yaml")
    cfg = OmegaConf.to_container(node, resolve=True)["dataset"]
    cfg.update(root=str(root), scenarios=["US"], scenario_dir=".", train_file="rechub_{scenario}_train.csv",
               test_file="rechub_{scenario}_test.csv", store_dir=str(store))
    cfg.update(extra)
    return cfg


def synthetic_cfg(root: Path, store: Path, **gen) -> dict:
    node = OmegaConf.create({"seed": 42, "paths": {"data": "/unused"}})
    node.dataset = OmegaConf.load(CONF / "synthetic.yaml")
    cfg = OmegaConf.to_container(node, resolve=True)["dataset"]
    cfg.update(root=str(root), store_dir=str(store))
    cfg["generator"].update(gen)
    return cfg


def tenrec_cfg(store: Path) -> dict:
    node = OmegaConf.create({"seed": 0, "paths": {"data": "/unused"}})
    node.dataset = OmegaConf.load(CONF / "tenrec.yaml")
    cfg = OmegaConf.to_container(node, resolve=True)["dataset"]
    cfg.update(root=str(FIXTURES / "tenrec"), scenarios=["QK-video", "QB-video"], store_dir=str(store))
    return cfg


def assert_same(a, b) -> None:
    assert a.field_dims == b.field_dims and a.task_names == b.task_names
    for split in ("train", "val", "test"):
        x, y = getattr(a, split), getattr(b, split)
        assert torch.equal(x.x_cat, y.x_cat) and x.x_cat.dtype == y.x_cat.dtype == torch.int64, split
        assert torch.equal(x.x_num, y.x_num) and x.x_num.dtype == torch.float32, split
        assert torch.equal(x.y, y.y) and x.y.dtype == torch.float32, split
    assert a.positive_rates == b.positive_rates


def frames_way(cfg: dict, scenario: str):
    settings = DatasetSettings.from_config(cfg)
    train, test = read_scenario(settings, scenario)
    return build_scenario_data(scenario, train, test, settings)


@pytest.mark.parametrize("transform", ["none", "standardize"])
def test_store_equals_the_in_memory_encoding_of_the_fixture(tmp_path, transform):
    cfg = ali_cfg(tmp_path, numeric_transform=transform)
    mine, theirs = load_scenario(cfg, "US"), frames_way(cfg, "US")
    if transform == "none":
        assert_same(mine, theirs)
    else:  # standardize: stats of float32-rounded inputs (store.py says why): ~1e-7 apart
        assert torch.equal(mine.train.x_cat, theirs.train.x_cat)
        assert torch.allclose(mine.test.x_num, theirs.test.x_num, rtol=0, atol=1e-5)


def test_store_equals_the_in_memory_encoding_of_the_default_synthetic_scenario(tmp_path):
    cfg = synthetic_cfg(tmp_path / "data", tmp_path / "store", rows_train=3000, rows_test=1000)
    for scenario in ("NL", "US"):
        assert_same(load_scenario(cfg, scenario), frames_way(cfg, scenario))


@pytest.mark.parametrize("threads", ["1", "3"])
def test_small_segments_chunks_and_id_merges_change_nothing(tmp_path, monkeypatch, threads):
    """The CSV cut into 1-4 KiB segments parsed by several threads, 50-row chunks and id
    tables merging every few ids: the same arrays as the in-memory encoding."""
    from pfms_client.data import readers

    monkeypatch.setattr(readers, "_SEGMENT_BYTES", 1500)
    monkeypatch.setattr(readers, "CHUNK_ROWS", 50)
    monkeypatch.setattr(store_mod._IdTable, "MERGE_MIN", 3)
    monkeypatch.setenv("PFMS_PARSE_THREADS", threads)
    cfg = synthetic_cfg(tmp_path / "data", tmp_path / "store", rows_train=700, rows_test=300)
    monkeypatch.setattr(readers.iter_checked_chunks, "__kwdefaults__",
                        dict(readers.iter_checked_chunks.__kwdefaults__, chunk_rows=50))
    assert_same(load_scenario(cfg, "NL"), frames_way(cfg, "NL"))
    chunks = list(iter_checked_chunks(tmp_path / "data" / "NL" / "train.csv",
                                      DatasetSettings.from_config(cfg).schema, chunk_rows=50))
    assert len(chunks) >= 10 and [c.first_row for c in chunks] == list(np.cumsum([0] + [len(c) for c in chunks[:-1]]))


def test_store_equals_the_in_memory_encoding_of_a_one_file_layout(tmp_path):
    cfg = tenrec_cfg(tmp_path)
    for scenario in ("QK-video", "QB-video"):
        assert_same(load_scenario(cfg, scenario), frames_way(cfg, scenario))


def test_min_count_and_max_rows_follow_the_in_memory_rules(tmp_path):
    cfg = ali_cfg(tmp_path, max_rows=60)
    cfg["vocab"]["min_count"] = 3
    assert_same(load_scenario(cfg, "US"), frames_way(cfg, "US"))


def test_open_maps_the_store_and_streams_what_memory_holds(tmp_path):
    data = open_scenario(ali_cfg(tmp_path), "US")
    assert isinstance(data.train, StoreSplit) and isinstance(data.train.x_cat, np.memmap)
    assert data.train.x_cat.dtype == np.int32 and data.train.y.dtype == np.uint8
    memory = data.in_memory()
    idx = torch.tensor([5, 0, 70, 3])
    for got, want in zip(data.train.batch(idx), memory.train.batch(idx), strict=True):
        assert torch.equal(got, want) and got.dtype == want.dtype
    for got, want in zip(data.test.rows(3, 11), memory.test.rows(3, 11), strict=True):
        assert torch.equal(got, want)
    assert data.positive_rates == memory.positive_rates


def test_reused_when_current_rebuilt_when_a_source_or_a_setting_changes(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for f in ALI_DIR.glob("*.csv"):
        (root / f.name).write_bytes(f.read_bytes())
    cfg = ali_cfg(tmp_path / "store", root=root)
    first = prepare_scenario(cfg, "US")
    built = (first / "manifest.json").stat().st_mtime_ns
    assert prepare_scenario(cfg, "US") == first and (first / "manifest.json").stat().st_mtime_ns == built
    # a source file rewritten (same size: a changed value) -> rebuilt in place
    train = root / "rechub_US_train.csv"
    lines = train.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    j = header.index("categorical_2")
    row[j] = str(int(row[j]) % 9 + 1) if len(row[j]) == 1 else row[j][::-1]
    lines[1] = ",".join(row)
    train.write_text("\n".join(lines) + "\n")
    again = prepare_scenario(cfg, "US")
    assert again == first and (again / "manifest.json").stat().st_mtime_ns != built
    assert_same(load_scenario(cfg, "US"), frames_way(cfg, "US"))
    # a setting that changes the encoding -> its own store
    other = dict(cfg, vocab={"min_count": 2})
    assert prepare_scenario(other, "US") != first
    assert json.loads((first / "manifest.json").read_text())["settings"]["min_count"] == 1


def test_a_crash_mid_build_leaves_the_old_store(tmp_path, monkeypatch):
    cfg = ali_cfg(tmp_path / "store")
    folder = prepare_scenario(cfg, "US")
    before = load_scenario(cfg, "US")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sources"]["train"]["size"] += 1  # looks stale: the next call rebuilds
    (folder / "manifest.json").write_text(json.dumps(manifest))
    real = store_mod._build

    def crash(tmp, *args, **kwargs):
        real(tmp, *args, **kwargs)
        (tmp / "rows" / "train" / "x_cat.npy").write_bytes(b"half")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(store_mod, "_build", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_scenario(cfg, "US")
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name, folder.name + ".lock"]
    manifest["sources"]["train"]["size"] -= 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert_same(load_scenario(cfg, "US"), before)
    monkeypatch.setattr(store_mod, "_build", real)
    (folder / "manifest.json").unlink()  # no manifest (a store killed before it was whole): rebuilt
    assert_same(load_scenario(cfg, "US"), before)


def _prepare_in_child(cfg_json: str, log: str) -> None:
    real = store_mod._build

    def slow_build(*args, **kwargs):
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        real(*args, **kwargs)

    store_mod._build = slow_build
    prepare_scenario(json.loads(cfg_json), "US")


def test_two_processes_preparing_at_once_build_once(tmp_path):
    cfg = ali_cfg(tmp_path / "store")
    log = tmp_path / "builds.log"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_prepare_in_child, args=(json.dumps(cfg), str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(log.read_text().split()) == 1  # the second waited on the lock, then reused
    assert_same(load_scenario(cfg, "US"), frames_way(cfg, "US"))


def test_parquet_source_gives_the_csv_store(tmp_path):
    root = tmp_path / "pq"
    root.mkdir()
    for split in ("train", "test"):
        pd.read_csv(ALI_DIR / f"rechub_US_{split}.csv").to_parquet(root / f"rechub_US_{split}.parquet")
    pq_cfg = ali_cfg(tmp_path / "s1", root=root, train_file="rechub_{scenario}_train.parquet",
                     test_file="rechub_{scenario}_test.parquet")
    assert_same(load_scenario(pq_cfg, "US"), load_scenario(ali_cfg(tmp_path / "s2"), "US"))
    df = pd.read_parquet(root / "rechub_US_train.parquet")
    df.loc[6, "click"] = 2
    df.to_parquet(root / "rechub_US_train.parquet")
    with pytest.raises(DataValidationError, match="label value 2 is not 0 or 1") as info:
        prepare_scenario(pq_cfg, "US")
    assert (info.value.column, info.value.line) == ("click", 7)  # row 7 of the file (1-based)


def test_undecodable_bytes_name_line_and_column(tmp_path):
    lines = (ALI_DIR / "rechub_US_train.csv").read_bytes().split(b"\n")
    header = lines[0].decode().split(",")
    cells = lines[33].split(b",")
    j = header.index("numerical_4")
    cells[j] = b"0.5\xff\xfe"
    lines[33] = b",".join(cells)
    path = tmp_path / "bad.csv"
    path.write_bytes(b"\n".join(lines))
    schema = DatasetSettings.from_config(ali_cfg(tmp_path)).schema
    for engine in ("arrow", "pandas"):
        with pytest.raises(DataValidationError, match="undecodable bytes") as info:
            list(iter_checked_chunks(path, schema, engine=engine, chunk_rows=10))
        assert (info.value.line, info.value.column) == (34, "numerical_4")
        assert "UTF-8" in str(info.value) and str(path) in str(info.value)


def test_an_id_written_as_a_float_takes_the_pandas_path_with_the_same_result(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    text = (ALI_DIR / "rechub_US_train.csv").read_text().splitlines()
    header = text[0].split(",")
    row = text[5].split(",")
    row[header.index("categorical_3")] += ".0"  # pyarrow refuses it as int64; today's rules accept it
    text[5] = ",".join(row)
    (root / "rechub_US_train.csv").write_text("\n".join(text) + "\n")
    (root / "rechub_US_test.csv").write_bytes((ALI_DIR / "rechub_US_test.csv").read_bytes())
    cfg = ali_cfg(tmp_path / "store", root=root)
    assert_same(load_scenario(cfg, "US"), frames_way(cfg, "US"))


def test_pfms_prepare_cli_prepares_and_reports(tmp_path, capsys):
    from pfms_client.data.prepare import main

    args = [f"dataset.root={tmp_path / 'data'}", f"dataset.store_dir={tmp_path / 'store'}",
            "dataset.generator.rows_train=600", "dataset.generator.rows_test=200", "dataset.scenarios=[NL,ES]"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "NL: 540 train / 60 val / 200 test rows" in err and "ES: 540 train" in err
    assert main([*args, "dataset.vocab.min_count=0"]) == 2
    assert "dataset.vocab.min_count=0" in capsys.readouterr().err


def test_the_saved_vocabulary_encodes_the_source_rows_as_the_store_holds_them(tmp_path):
    """vocab/<field>.npy + encode_ids reproduce x_cat from the raw CSV ids (train, val and
    test rows alike; a test-only id is out of vocabulary), with min_count dropping ids."""
    cfg = ali_cfg(tmp_path)
    cfg["vocab"]["min_count"] = 2
    folder = prepare_scenario(cfg, "US")
    data = open_scenario(cfg, "US")
    settings = DatasetSettings.from_config(cfg)
    test = pd.read_csv(ALI_DIR / "rechub_US_test.csv")
    got = np.stack([store_mod.encode_ids(store_mod.read_vocab(folder, c), test[c].to_numpy())
                    for c in settings.schema.categorical], axis=1)
    assert np.array_equal(got, data.test.take(slice(None))[0])
    train = pd.read_csv(ALI_DIR / "rechub_US_train.csv")
    vocab = store_mod.read_vocab(folder, "categorical_2")
    counts = train["categorical_2"].iloc[data.train.index].value_counts()
    assert sorted(counts[counts >= 2].index) == vocab.tolist()  # kept ids: seen >= min_count times in train
    assert store_mod.encode_ids(vocab, np.array([-12345, vocab[0]])).tolist() == [0, 1]
    assert store_mod.encode_ids(np.zeros(0, dtype=np.int64), np.array([5])).tolist() == [0]
