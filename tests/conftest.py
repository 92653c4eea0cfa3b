"""Shared fixtures: Flower's TaskIdentity for Messages built outside a runtime, and
a small generated synthetic dataset reused by the in-process runs.

Tests are grouped by the package part they check: client/ (client/data/), server/
(server/aggregation/, server/deploy/, server/experiments/) and system/ (real
processes, builds). This file stays at tests/, so ``from conftest import ...``
works in every folder; test file names are unique across folders."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

torch.set_num_threads(1)

# Nothing a test runs writes to the user's ~/.pfms (data, runs, the composed-config cache):
# the pfms_home fixture points PFMS_HOME at its own folder; until then, this one.
_SESSION_HOME = tempfile.mkdtemp(prefix="pfms-tests-")
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
os.environ["PFMS_HOME"] = _SESSION_HOME

# Paths every test folder uses (tests/client/data/... and tests/system/... alike).
REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
CONF_DATASET = REPO / "conf" / "dataset"


def pytest_collection_modifyitems(config, items):
    """The slow tests (real processes, minutes each) first: spread over xdist's workers
    at the start, they overlap with the many short tests instead of ending the run."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def task_identity():
    """A Message created outside a Flower runtime needs a run/node/task identity."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SUPERLINK_NODE_ID, 1
    yield TaskIdentity
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(scope="session")
def pfms_home(tmp_path_factory) -> Path:
    """PFMS_HOME for the whole session: generated data is made once and reused."""
    home = tmp_path_factory.mktemp("pfms_home")
    os.environ["PFMS_HOME"] = str(home)
    return home


# The in-process tests check mechanics (messages, state, equality of two schedules),
# not learning, so they share one small synthetic data set (4 x 1,500 train / 1,000 test
# rows, generated once per session). test_simulation checks learning on the default
# data (4 x 20k / 10k) with ``LEARNING_DATA``.
SMALL_DATA: list[str] = ["dataset.generator.rows_train=1500", "dataset.generator.rows_test=1000"]
LEARNING_DATA: list[str] = []


def inprocess_overrides(home: Path, *extra: str, data: list[str] = SMALL_DATA) -> list[str]:
    """Small, fast settings shared by the in-process federated tests. No AUC plot (about
    1 s of matplotlib per run); a test that checks the plot passes ``server.plot=true``."""
    return [f"paths.home={home}", *data, "server.plot=false", *extra]


def run_inprocess(overrides: list[str], run_dir: Path, grid_factory=None, node_extra: dict | None = None):
    """Run the ServerApp logic against the ClientApp in this process."""
    from pfms_client.client_app import app as client_app
    from pfms_client.config import load_config
    from pfms_server.experiments.inprocess import InProcessGrid
    from pfms_server.server_app import run

    cfg = load_config(overrides)
    k = len(cfg.dataset.scenarios)
    nodes = [{"partition-id": i, "num-partitions": k, **(node_extra or {})} for i in range(k)]
    factory = grid_factory or InProcessGrid
    grid = factory(client_app, nodes, {"overrides": " ".join(overrides)})
    run_dir.mkdir(parents=True, exist_ok=True)
    strategy, summary = run(grid, cfg, run_dir)
    return grid, strategy, summary


def forge(record, mutate):
    """A packed ArrayRecord (pfms_client.wire) whose JSON header ``mutate(header)`` changed
    in place, the tensor bytes kept: what a faulty or hostile peer could send."""
    import json

    import numpy as np
    from flwr.app import Array, ArrayRecord

    from pfms_client.wire import ALIGN, KEY

    buf = record[KEY].numpy()
    n = int.from_bytes(buf[:8].tobytes(), "little")
    header = json.loads(buf[8:8 + n].tobytes())
    data = buf[-(-(8 + n) // ALIGN) * ALIGN:]
    mutate(header)
    text = json.dumps(header).encode()
    start = -(-(8 + len(text)) // ALIGN) * ALIGN
    out = np.zeros(start + data.size, dtype=np.uint8)
    out[:8] = np.frombuffer(len(text).to_bytes(8, "little"), dtype=np.uint8)
    out[8:8 + len(text)] = np.frombuffer(text, dtype=np.uint8)
    out[start:] = data
    return ArrayRecord({KEY: Array(out)})
