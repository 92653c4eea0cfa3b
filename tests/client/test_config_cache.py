"""load_config reuses a composed config only while everything it was composed from is the same."""

from __future__ import annotations

import os
import shutil

import pytest

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
