"""Failed runs fail loudly: bad data stop a simulation before round 1 with one line
(file, line, column); a round that aggregates too few replies says so; a run in which
no round aggregated or a scenario never trained ends with status failed."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from flwr.app import Context, Error, Message

from conftest import FIXTURES, run_inprocess
from pfms_client.data import DataValidationError
from pfms_server.data_check import check_scenarios, undecodable_cell
from pfms_server.experiments.inprocess import InProcessGrid
from pfms_server.server_app import RunFailed, is_simulation, main

ALI = FIXTURES / "aliexpress_sample"
TINY = ["dataset.generator.rows_train=1500", "dataset.generator.rows_test=800", "num_rounds=1",
        "eval.splits=[test]", "server.plot=false"]


# --- bad data: the real AliExpress layout, NL fine, ES broken -----------------------------------
def aliexpress_layout(root: Path) -> Path:
    """{root}/AliExpress_{NL,ES}/{train,test}.csv, each a copy of the real sample."""
    for scenario in ("NL", "ES"):
        folder = root / f"AliExpress_{scenario}"
        folder.mkdir(parents=True)
        shutil.copy(ALI / "rechub_US_train.csv", folder / "train.csv")
        shutil.copy(ALI / "rechub_US_test.csv", folder / "test.csv")
    return root


def set_cell(path: Path, line: int, column: str, value: str) -> None:
    lines = path.read_text().splitlines(True)
    header = lines[0].rstrip("\n").split(",")
    cells = lines[line - 1].rstrip("\n").split(",")
    cells[header.index(column)] = value
    lines[line - 1] = ",".join(cells) + "\n"
    path.write_text("".join(lines))


def first_line_where(path: Path, column: str, value: str) -> int:
    lines = path.read_text().splitlines()
    i = lines[0].split(",").index(column)
    return next(n for n, ln in enumerate(lines[1:], start=2) if ln.split(",")[i] == value)


def missing_test_file(es: Path) -> str:
    (es / "test.csv").unlink()
    return f"{es / 'test.csv'}: file not found"


def non_numeric_cell(es: Path) -> str:
    set_cell(es / "train.csv", 7, "numerical_5", "abc")
    return f"{es / 'train.csv'} line 7, column 'numerical_5': non-numeric value 'abc'"


def conversion_without_click(es: Path) -> str:
    line = first_line_where(es / "train.csv", "click", "0")
    set_cell(es / "train.csv", line, "conversion", "1")
    return f"{es / 'train.csv'} line {line}, column 'conversion': conversion=1 without click=1"


def truncated_row(es: Path) -> str:
    lines = (es / "train.csv").read_text().splitlines(True)
    lines[11] = ",".join(lines[11].split(",")[:40]) + "\n"  # line 12 ends after its 40th field
    (es / "train.csv").write_text("".join(lines))
    header = lines[0].split(",")
    return f"{es / 'train.csv'} line 12, column '{header[40]}': empty or NaN cell"


def undecodable_file(es: Path) -> str:
    raw = (es / "test.csv").read_bytes().split(b"\n")
    cut = raw[4].index(b",", 25)  # inside line 5, at the start of a field
    raw[4] = raw[4][:cut + 1] + b"\xff\xfe" + raw[4][cut + 1:]
    (es / "test.csv").write_bytes(b"\n".join(raw))
    column = raw[0].decode().split(",")[raw[4][:cut + 1].count(b",")]
    return f"{es / 'test.csv'} line 5, column '{column}': undecodable bytes b'\\xff' (the file must be UTF-8 text)"


BREAKS = [missing_test_file, non_numeric_cell, conversion_without_click, truncated_row, undecodable_file]


class CountingGrid(InProcessGrid):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.sent = []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.sent += [m.metadata.message_type for m in messages]
        return super().send_and_receive(messages, timeout=timeout)


@pytest.mark.parametrize("corrupt", BREAKS, ids=lambda f: f.__name__)
def test_bad_data_stop_the_run_before_round_1_with_one_line(pfms_home, tmp_path, caplog, corrupt):
    root = aliexpress_layout(tmp_path / "AliExpress")
    expected = corrupt(root / "AliExpress_ES")
    overrides = [f"paths.home={pfms_home}", "dataset=aliexpress", f"dataset.root={root}",
                 "dataset.scenarios=[NL,ES]", "num_rounds=2", "server.plot=false"]
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.ERROR, logger="flwr"), pytest.raises(DataValidationError) as info:
        run_inprocess(overrides, run_dir, CountingGrid)
    assert str(info.value) == expected
    assert "\n" not in str(info.value)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [f"pfms: {expected}"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failure"] == expected
    assert not (run_dir / "metrics.csv").exists() and not (run_dir / "server_state").exists()


def test_no_message_is_sent_when_the_data_are_bad(pfms_home, tmp_path):
    root = aliexpress_layout(tmp_path / "AliExpress")
    non_numeric_cell(root / "AliExpress_ES")
    grids = []

    class Remember(CountingGrid):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            grids.append(self)

    with pytest.raises(DataValidationError):
        run_inprocess([f"paths.home={pfms_home}", "dataset=aliexpress", f"dataset.root={root}",
                       "dataset.scenarios=[NL,ES]", "server.plot=false"], tmp_path / "run", Remember)
    assert grids[0].sent == []


def test_a_passed_check_is_not_repeated_until_a_file_changes(pfms_home, tmp_path, monkeypatch):
    from pfms_client.config import load_config
    import pfms_client.data as data

    root = aliexpress_layout(tmp_path / "AliExpress")
    cfg = load_config([f"paths.home={pfms_home}", "dataset=aliexpress", f"dataset.root={root}",
                       "dataset.scenarios=[NL,ES]"])
    calls = []
    real = data.prepare_scenario
    monkeypatch.setattr(data, "prepare_scenario", lambda ds, s, *a, **k: calls.append(s) or real(ds, s, *a, **k))
    check_scenarios(cfg)
    check_scenarios(cfg)
    assert calls == ["NL", "ES"]
    expected = non_numeric_cell(root / "AliExpress_ES")  # changes size and mtime
    with pytest.raises(DataValidationError, match="line 7, column 'numerical_5'"):
        check_scenarios(cfg)
    assert calls == ["NL", "ES", "ES"] and expected


def test_undecodable_cell_names_the_line_and_column(tmp_path):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_bytes(b"\xef\xbb\xbfa,b,c\n1,2,3\n")
    bad.write_bytes(b"a,b,c\n1,2,3\n4,5\xe9,6\n")
    assert undecodable_cell([good]) is None
    assert undecodable_cell([good, bad]) == (bad, 3, "b", "bytes b'\\xe9' are not utf-8")


def test_only_flowers_in_memory_grid_is_a_simulation(monkeypatch):
    """Flower's module (seconds to import) stood in for by one with the same names."""
    import sys
    import types

    from pfms_server.server_app import SIMULATION_GRID

    module = types.ModuleType(SIMULATION_GRID[0])
    grid_type = type(SIMULATION_GRID[1], (InProcessGrid,), {})
    setattr(module, SIMULATION_GRID[1], grid_type)
    plain = InProcessGrid(lambda m, c: m, [])
    monkeypatch.delitem(sys.modules, SIMULATION_GRID[0], raising=False)
    assert not is_simulation(plain)
    monkeypatch.setitem(sys.modules, SIMULATION_GRID[0], module)
    assert is_simulation(grid_type(lambda m, c: m, [])) and not is_simulation(plain)


# --- rounds that aggregate too few replies --------------------------------------------------------
class TrainFailsGrid(InProcessGrid):
    """Nodes serving ``failing`` answer every train message with an error."""

    failing = ("ES",)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            pid = self.contexts[node].node_config["partition-id"]
            if msg.metadata.message_type == "train" and ("NL", "ES", "FR", "US")[pid] in self.failing:
                replies.append(Message(Error(code=0, reason="Traceback ...\nValueError: disk full"), reply_to=msg))
            else:
                replies += super().send_and_receive([msg], timeout=timeout)
        return replies


def test_rounds_without_enough_valid_replies_fail_the_run(pfms_home, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="flwr"):
        _, strategy, summary = run_inprocess(
            [f"paths.home={pfms_home}", *TINY, "num_rounds=2", "eval.every=2",
             "strategy.participation.min_train_nodes=4"], tmp_path / "run", TrainFailsGrid)
    lines = [r.getMessage() for r in caplog.records]
    for k in (1, 2):
        assert f"round {k} NOT aggregated: 3 valid of 4 replies (4 sent) < min_train_nodes=4 " \
               "(ES: failed: ValueError: disk full); state unchanged" in lines
    assert summary["status"] == "failed"
    assert summary["failure"] == ("no round aggregated in 2 round(s) (last: 3 valid of 4 replies (4 sent) "
                                  "< min_train_nodes=4); ES: failed: ValueError: disk full")
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["status"] == "failed" and on_disk["aggregated_rounds"] == []
    assert [(r["round"], r["aggregated"], r["replies_received"], r["replies_valid"]) for r in on_disk["rounds_log"]] \
        == [(1, False, 4, 3), (2, False, 4, 3)]
    assert on_disk["rounds_log"][0]["problems"] == {"ES": "failed: ValueError: disk full"}
    assert any(ln.startswith("  RUN FAILED: no round aggregated") for ln in lines)
    assert strategy.train_log == []


def test_a_scenario_that_never_trained_fails_the_run(pfms_home, tmp_path):
    _, _, summary = run_inprocess([f"paths.home={pfms_home}", *TINY, "strategy.participation.min_train_nodes=2"],
                                  tmp_path / "run", TrainFailsGrid)
    assert summary["status"] == "failed"
    assert summary["failure"] == ("scenario(s) ES never trained (rounds aggregated: 1); "
                                  "ES: failed: ValueError: disk full")
    assert summary["aggregated_rounds"] == [1]
    assert summary["rounds_log"][0]["seconds"] > 0  # wall seconds of the round
    assert summary["rounds_log"][0] | {"problems": None, "seconds": None} == {
        "round": 1, "aggregated": True, "sent": 4, "replies_received": 4, "replies_valid": 3,
        "min_train_nodes": 2, "trained": ["FR", "NL", "US"], "problems": None, "seconds": None}


def test_the_serverapp_raises_so_flower_marks_the_run_failed(pfms_home, tmp_path):
    overrides = " ".join([f"paths.home={pfms_home}", f"paths.runs={tmp_path}", *TINY,
                          "strategy.participation.min_train_nodes=4", "run_name=fails"])
    from pfms_client.client_app import app as client_app

    nodes = [{"partition-id": i, "num-partitions": 4} for i in range(4)]
    grid = TrainFailsGrid(client_app, nodes, {"overrides": overrides})
    context = Context(run_id=1, node_id=0, node_config={}, state=None, run_config={"overrides": overrides})
    with pytest.raises(RunFailed, match=r"^pfms: run failed: no round aggregated in 1 round\(s\)"):
        main(grid, context)
    assert json.loads((tmp_path / "fails" / "summary.json").read_text())["status"] == "failed"
