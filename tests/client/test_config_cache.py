"""load_config reuses a composed config only while everything it was composed from is the same."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from omegaconf import OmegaConf

from pfms_client import config
from pfms_client.config import CONF_ENV, conf_dir, load_config


def test_same_overrides_give_the_same_read_only_config():
    a = load_config(["num_rounds=3", "seed=5"])
    b = load_config("num_rounds=3 seed=5")
    assert a is b
    with pytest.raises(Exception):
        a.num_rounds = 4  # shared, so it must stay read-only
    assert load_config(["num_rounds=4", "seed=5"]).num_rounds == 4


def test_a_changed_environment_variable_is_composed_again(monkeypatch, tmp_path):
    monkeypatch.setenv("PFMS_HOME", str(tmp_path / "one"))
    one = load_config(["seed=7"])
    monkeypatch.setenv("PFMS_HOME", str(tmp_path / "two"))
    two = load_config(["seed=7"])
    assert one.paths.home == str(tmp_path / "one") and two.paths.home == str(tmp_path / "two")


def test_an_edited_conf_file_is_composed_again(monkeypatch, tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(conf_dir(), conf)
    monkeypatch.setenv(CONF_ENV, str(conf))
    assert load_config([]).num_rounds == 10
    text = (conf / "config.yaml").read_text()
    assert "num_rounds: 10\n" in text
    (conf / "config.yaml").write_text(text.replace("num_rounds: 10\n", "num_rounds: 12\n"))
    stat = (conf / "config.yaml").stat()  # a later mtime even on a coarse clock
    os.utime(conf / "config.yaml", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_config([]).num_rounds == 12


# --- across processes: $PFMS_HOME/cache/config --------------------------------------------------------
@pytest.fixture
def fresh_process(monkeypatch, tmp_path):
    """A new process's view: nothing composed in memory, its own PFMS_HOME (so its own cache)."""
    monkeypatch.setenv("PFMS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(config, "_COMPOSED", {})
    return lambda: monkeypatch.setattr(config, "_COMPOSED", {})


def _no_compose(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("composed although the cache holds this config")
    monkeypatch.setattr(config, "compose", refuse)


def test_another_process_reads_the_config_from_the_cache_without_composing(fresh_process, monkeypatch):
    first = load_config("num_rounds=3 train.lr=0.01")
    assert len(list(config.cache_dir().glob("*.json"))) == 1
    fresh_process()
    _no_compose(monkeypatch)
    again = load_config("num_rounds=3 train.lr=0.01")
    assert again is not first
    assert OmegaConf.to_container(again) == OmegaConf.to_container(first)
    assert OmegaConf.is_struct(again) and OmegaConf.is_readonly(again)  # as a composed one
    with pytest.raises(Exception):
        again.train.lrr = 1  # struct: an unknown key is an error, as after a compose


def test_other_overrides_or_environment_are_not_served_from_the_cache(fresh_process, monkeypatch, tmp_path):
    load_config("seed=1")
    fresh_process()
    assert load_config("seed=2").seed == 2
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))  # conf/config.yaml reads it
    fresh_process()
    assert load_config("seed=1").seed == 1
    assert len(list(config.cache_dir().glob("*.json"))) == 3


@pytest.mark.parametrize("spoil", [
    lambda text: text[: len(text) // 2],  # a partial write
    lambda text: "\x00\xff garbage",
    lambda text: text.replace('"lr": 0.01', '"lr": -1.0'),  # a value the checks refuse
    lambda text: text.replace('"train.lr=0.01"', '"train.lr=0.02"').replace('"lr": 0.01', '"lr": 0.02'),  # another key's
])
def test_a_spoiled_cache_file_is_composed_again_and_replaced(fresh_process, spoil):
    want = OmegaConf.to_container(load_config("train.lr=0.01"))
    (path,) = config.cache_dir().glob("*.json")
    spoiled = spoil(path.read_text())
    assert spoiled != path.read_text()
    path.write_text(spoiled)
    fresh_process()
    assert OmegaConf.to_container(load_config("train.lr=0.01")) == want
    assert json.loads(path.read_text())["config"] == want


def test_an_unwritable_cache_is_skipped(fresh_process, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PFMS_HOME", str(blocker))
    assert load_config("seed=3").seed == 3


def test_only_the_newest_files_are_kept(fresh_process, monkeypatch):
    monkeypatch.setattr(config, "_CACHE_MAX", 3)
    for seed in range(5):
        load_config(f"seed={seed}")
    kept = sorted(json.loads(p.read_text())["config"]["seed"] for p in config.cache_dir().glob("*.json"))
    assert kept == [2, 3, 4]
    assert not list(config.cache_dir().glob("*.tmp"))
