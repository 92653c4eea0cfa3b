"""``ScenarioStrategy``: the one Flower strategy (Message API); it runs any aggregation rule.

The strategy only orchestrates: it learns which scenario each node serves (a
``query`` message to a node it does not know yet, so node ids may change across
restarts), sends every node its own personalized tensors, checks the replies, and
hands the valid ones to the pure aggregation rule (PF-MSMTrec's ``aggregate_round``
or a baseline's, from ``strategy.algorithm``). All math lives in
``pfms_server.aggregation``.

Message schedule: when every node trains every round (``fraction_train`` 1), a
round is one message per node. The train message of round r also asks the node to
evaluate the model it brings, before training on it: that is the model round r-1
ended with, so its metrics are round r-1's, exactly those a separate evaluate
message would have returned (tests/server/test_strategy.py checks it). The last
round is evaluated by a final evaluate message. With a sampled fraction, nodes
that do not train still evaluate, so each round keeps its evaluate message.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log
from pfms_client.wire import WireError, pack, unpack

from . import report
from .aggregation.pfmsmtrec import hyperparams
from .aggregation.rules import Rule
from .aggregation.state import Arrays, ServerState
from .aggregation.validate import count_problems, upload_problems
from .polling_grid import PollingGrid


MAX_REASON_CHARS = 300  # a client's error reason is cut to this in round results


TIMING_FIELDS = ("start", "import", "config", "data", "model", "train", "evaluate")


def client_seconds(server_round: int, scenario: str, phase: str, metrics: dict) -> dict:
    """Where a client's message went (its ``time.*`` metrics, informative only) and its peak
    anonymous memory, as one row of client_seconds.csv; a missing or non-numeric value is empty."""
    row: dict = {"round": server_round, "scenario": scenario, "phase": phase}
    for name in TIMING_FIELDS:
        value = _real(metrics.get(f"time.{name}"))
        row[name] = round(value, 4) if np.isfinite(value) else ""
    threads = _real(metrics.get("threads"))
    row["threads"] = int(threads) if np.isfinite(threads) else ""
    peak = _real(metrics.get("mem.peak_anon_mib"))
    row["peak_anon_mib"] = round(peak, 1) if np.isfinite(peak) else ""
    return row


def _real(value: object) -> float:
    """A metric a client reported, as a float; NaN where it is not a finite real number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
        return float(value)
    return float("nan")


class ScenarioStrategy(Strategy):
    """Rounds over scenario nodes; the aggregation itself is ``rule`` (PF-MSMTrec or a baseline)."""

    # A round's evaluation travels with the next round's train messages when every node trains;
    # False keeps a separate evaluate message per round (the tests compare the two schedules).
    EVAL_WITH_TRAIN = True

    # pylint: disable=too-many-arguments,too-many-instance-attributes
    def __init__(
        self,
        rule: Rule,
        scenarios: list[str],
        *,
        seed: int = 0,
        num_rounds: int,
        min_available_nodes: int | None = None,
        min_train_nodes: int = 1,
        fraction_train: float = 1.0,
        eval_every: int = 1,
        eval_splits: Iterable[str] = ("val", "test"),
        run_dir: Path | None = None,
        round_timeout: float = 3600.0,
        state: ServerState | None = None,
        poll_interval: float = 0.0,
    ) -> None:
        bad = [s for s in scenarios if "/" in s or not s]
        if bad or len(set(scenarios)) != len(scenarios):
            raise ValueError(f"scenario ids must be unique, non-empty and without '/': {scenarios}")
        self.rule = rule
        self.seed = seed
        self.scenarios = list(scenarios)
        self.num_rounds = num_rounds
        self.min_available_nodes = min_available_nodes or len(scenarios)
        self.min_train_nodes = max(1, min_train_nodes)
        self.fraction_train = fraction_train
        self.eval_every = max(1, eval_every)
        self.eval_splits = list(eval_splits)
        self.run_dir = run_dir
        self.round_timeout = round_timeout
        self.state = state or ServerState()
        self.poll_interval = poll_interval  # seconds between pulls for replies; 0 = the Grid's own
        self.eval_with_train = fraction_train >= 1.0 and self.EVAL_WITH_TRAIN
        self.pending_eval: int | None = None  # the round the train messages out now also evaluate
        # Flower's start() numbers rounds from 1; a resumed run goes on from the
        # checkpoint's round, so every hook adds this offset.
        self.round_offset = self.state.round
        self.node_scenario: dict[int, str] = {}
        self.sent: dict[int, tuple[str, Arrays]] = {}
        self.rows: list[dict] = []
        self.train_log: list[dict] = []
        self.timings: list[dict] = []  # client_seconds.csv: where each client message's seconds went
        # One entry per train phase of this process: aggregated or not, and why (summary.json "rounds_log").
        self.round_results: list[dict] = []
        self.round_started: float | None = None  # when configure_train began this round

    # -- helpers -------------------------------------------------------------------
    def _grid(self, grid: Grid) -> Grid:
        if self.poll_interval > 0 and not isinstance(grid, PollingGrid):
            return PollingGrid(grid, self.poll_interval)
        return grid

    def start(self, grid: Grid, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        """Flower's round loop, with replies pulled every ``poll_interval`` seconds."""
        return super().start(self._grid(grid), *args, **kwargs)

    def summary(self) -> None:
        log(INFO, "\t├──> %s over scenarios %s", self.rule.name, self.scenarios)
        log(INFO, "\t├── %s", self.rule.description)
        log(INFO, "\t└── nodes: min available %d, min train %d", self.min_available_nodes, self.min_train_nodes)

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.round_timeout
        while len(nodes := sorted(grid.get_node_ids())) < self.min_available_nodes:
            if time.monotonic() > deadline:
                log(WARNING, "only %d of %d nodes connected; going on", len(nodes), self.min_available_nodes)
                break
            log(INFO, "Waiting for nodes: %d connected (need %d)", len(nodes), self.min_available_nodes)
            time.sleep(1.0)
        return nodes

    def _resolve(self, grid: Grid, nodes: list[int]) -> dict[int, str]:
        """Ask unknown nodes which scenario they serve (and, once, for the initial tensors)."""
        unknown = [n for n in nodes if n not in self.node_scenario]
        if unknown:
            want_init = self.state.init is None
            queries = [
                Message(RecordDict({"config": ConfigRecord({"want-init": want_init})}),
                        message_type=MessageType.QUERY, dst_node_id=n)
                for n in unknown
            ]
            candidates: dict[str, tuple[int, Arrays]] = {}
            connected = set(grid.get_node_ids())  # not just the sampled nodes
            for reply in grid.send_and_receive(queries, timeout=self.round_timeout):
                node = reply.metadata.src_node_id
                if reply.has_error():
                    log(WARNING, "node %d did not say its scenario: %s", node, reply.error.reason)
                    continue
                scenario = str(reply.content["meta"]["scenario"])
                if scenario not in self.scenarios:
                    log(WARNING, "node %d serves unknown scenario %r; ignored", node, scenario)
                    continue
                holder = next((n for n, s in self.node_scenario.items() if s == scenario), None)
                if holder is not None and holder in connected:
                    log(WARNING, "node %d claims scenario %s already served by node %d; ignored",
                        node, scenario, holder)
                    continue
                if holder is not None:
                    del self.node_scenario[holder]  # the node restarted under a new id
                self.node_scenario[node] = scenario
                if self.state.init is None and "arrays" in reply.content:
                    try:
                        candidates[scenario] = (node, unpack(reply.content["arrays"]))
                    except WireError as exc:
                        log(WARNING, "node %d (%s): its initial tensors cannot be read: %s", node, scenario, exc)
            if self.state.init is None and candidates:
                # The first scenario in dataset order, not the first reply: reply order
                # depends on the network, and the initialisation must not.
                scenario = min(candidates, key=self.scenarios.index)
                node, arrays = candidates[scenario]
                self.state.set_init(arrays)
                log(INFO, "common initialisation taken from node %d (%s)", node, scenario)
        return {n: self.node_scenario[n] for n in nodes if n in self.node_scenario}

    def _messages(self, mapping: dict[int, str], message_type: str, config: dict) -> list[Message]:
        self.sent = {}
        out = []
        for node, scenario in sorted(mapping.items(), key=lambda kv: kv[1]):
            arrays = self.state.arrays_for(scenario)
            self.sent[node] = (scenario, arrays)
            cfg = dict(config)
            if self.run_dir is not None:
                cfg["run-key"] = self.run_dir.name
            # one packed Array (pfms_client.wire): 5 Flower objects a message, not 51
            content = RecordDict({"arrays": pack(arrays), "config": ConfigRecord(cfg)})
            out.append(Message(content, message_type=message_type, dst_node_id=node))
        return out

    # -- training ------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        self.round_started = time.monotonic()
        nodes = self._wait_for_nodes(grid)
        if self.fraction_train < 1.0:
            rng = np.random.default_rng(self.seed + server_round)
            size = max(self.min_train_nodes, int(round(len(nodes) * self.fraction_train)))
            nodes = sorted(rng.choice(nodes, size=min(size, len(nodes)), replace=False).tolist())
        mapping = self._resolve(grid, nodes)
        if self.state.init is None:
            log(WARNING, "round %d: no node returned initial tensors; nothing to train", server_round)
            return []
        log(INFO, "configure_train: %d nodes (%s)", len(mapping), ", ".join(sorted(mapping.values())))
        cfg = {**dict(config), "server-round": server_round}
        previous = server_round - 1
        self.pending_eval = None
        if self.eval_with_train and self.eval_due(previous) and previous not in {r["round"] for r in self.rows}:
            cfg["evaluate-splits"] = self.eval_splits  # round r-1's evaluation travels with round r's training
            self.pending_eval = previous
        return self._messages(mapping, MessageType.TRAIN, cfg)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        uploads: dict[str, Arrays] = {}
        counts: dict[str, int] = {}
        metrics: dict[str, dict] = {}
        sizes: dict[str, int] = {}  # bytes of tensor data each client uploaded
        dropped: list[str] = []
        evaluated: list[dict] = []
        why: dict[str, str] = {}  # scenario (or "node <id>") -> why its reply was not used
        received = 0
        for msg in replies:
            received += 1
            if (scenario := self._reply_scenario(msg, server_round, "training")) is None:
                why[self._reply_label(msg)] = self._reply_problem(msg)
                continue
            if self.pending_eval is not None:  # the previous round's metrics, whatever the tensors are
                evaluated += self._eval_rows(msg, self.pending_eval, scenario)
            node = msg.metadata.src_node_id
            problems, arrays, count = self._check_reply(msg, self.sent[node][1])
            if problems:
                log(WARNING, "round %d: dropping reply of node %d (%s): %s",
                    server_round, node, scenario, "; ".join(problems[:5]))
                dropped.append(scenario)
                why[scenario] = "invalid reply: " + "; ".join(problems[:3])
                continue
            uploads[scenario] = arrays
            sizes[scenario] = int(sum(a.nbytes for a in arrays.values()))
            counts[scenario] = count
            reported = msg.content["metrics"]  # informative only: never trusted to be numbers
            metrics[scenario] = {k: _real(reported.get(k)) for k in ("train_bce", "samples_per_s")}
            self._record_seconds(server_round, scenario, "train", dict(reported))
        if self.pending_eval is not None:
            self._record_evaluation(self.pending_eval, evaluated)
            self.pending_eval = None
        silent = sorted({sc for sc, _ in self.sent.values()} - set(uploads) - set(dropped))
        if silent:
            log(WARNING, "round %d: no usable reply from %s", server_round, ", ".join(silent))
        for scenario in silent:
            why.setdefault(scenario, "no reply")
        result = {"round": server_round, "aggregated": len(uploads) >= self.min_train_nodes,
                  "sent": len(self.sent), "replies_received": received, "replies_valid": len(uploads),
                  "min_train_nodes": self.min_train_nodes, "trained": sorted(uploads), "problems": why}
        if self.round_started is not None:  # wall seconds from sending the train messages to the last reply
            result["seconds"] = round(time.monotonic() - self.round_started, 3)
        if self.state.init is None:
            result["why"] = "no node returned initial tensors (every query failed); nothing was sent"
        elif not result["aggregated"]:
            result["why"] = (f"{len(uploads)} valid of {received} replies ({len(self.sent)} sent) "
                             f"< min_train_nodes={self.min_train_nodes}")
        self.round_results.append(result)
        if not result["aggregated"]:
            detail = "; ".join(f"{k}: {v}" for k, v in sorted(why.items()))
            log(WARNING, "round %d NOT aggregated: %s%s; state unchanged", server_round,
                result.get("why", ""), f" ({detail})" if detail else "")
            self.state.round = server_round
            return None, None
        self.state = self.rule.aggregate(self.state, uploads, counts)
        self.state.round = server_round
        hps = hyperparams(self.state)
        for scenario in sorted(uploads):
            m, hp = metrics[scenario], hps.get(scenario, {"alpha": None, "beta_mean": None})
            log(INFO, "  %-10s n=%-7d bce=%.4f  %.0f samples/s  up=%d B  alpha=%s  beta=%s", scenario,
                counts[scenario], m["train_bce"], m["samples_per_s"], sizes[scenario],
                "-" if hp["alpha"] is None else np.round(hp["alpha"], 4).tolist(),
                "-" if hp["beta_mean"] is None else f"{hp['beta_mean']:.4f}")
            self.train_log.append({"round": server_round, "scenario": scenario, **hp,
                                   "train_bce": m["train_bce"] if np.isfinite(m["train_bce"]) else None,
                                   "num_examples": counts[scenario], "upload_bytes": sizes[scenario]})
        if self.run_dir is not None:
            # The train log before the state: a resume keeps the log's rounds up to the
            # state's round, so a stop between the two writes loses nothing.
            report.write_json(self.run_dir / "train_log.json", self.train_log)
            self.state.save(self.run_dir / "server_state")
        # Sample-weighted over the replies that report a loss; counts scaled by their
        # maximum first, as in FedAvg, so that huge (but finite) counts cannot overflow.
        with_bce = [s for s in sorted(uploads) if np.isfinite(metrics[s]["train_bce"])]
        w = np.array([float(counts[s]) for s in with_bce])
        w = w / w.max() if with_bce else w
        mean_bce = float(np.dot(w, [metrics[s]["train_bce"] for s in with_bce]) / w.sum()) if with_bce else float("nan")
        return pack(self.state.global_arrays), MetricRecord({"train_bce": mean_bce, "clients": len(uploads)})

    def _reply_scenario(self, msg: Message, server_round: int, phase: str) -> str | None:
        """The scenario a reply speaks for; None (logged) for an error, a stranger or a wrong claim."""
        node = msg.metadata.src_node_id
        if msg.has_error():
            scenario = self.sent[node][0] if node in self.sent else "?"
            log(WARNING, "round %d: %s failed on node %d (%s): %s", server_round, phase, node, scenario,
                msg.error.reason)
            return None
        if node not in self.sent:
            log(WARNING, "round %d: %s reply from node %d that was not sent work; dropped", server_round, phase, node)
            return None
        scenario = self.sent[node][0]
        meta = msg.content.get("meta")
        claimed = str(meta.get("scenario", "")) if meta is not None else ""
        if claimed != scenario:
            log(WARNING, "round %d: dropping %s reply of node %d: it says scenario %r, the node serves %r",
                server_round, phase, node, claimed, scenario)
            return None
        return scenario

    def _reply_label(self, msg: Message) -> str:
        node = msg.metadata.src_node_id
        return self.sent[node][0] if node in self.sent else f"node {node}"

    @staticmethod
    def _reply_problem(msg: Message) -> str:
        """Why a reply that _reply_scenario refused is unusable, in one line (an error's last line)."""
        if not msg.has_error():
            return "reply from a node that was not sent work, or for another scenario"
        lines = [ln.strip() for ln in str(msg.error.reason).splitlines() if ln.strip()]
        return ("failed: " + (lines[-1] if lines else "(no reason given)"))[:MAX_REASON_CHARS]

    @staticmethod
    def _check_reply(msg: Message, expected: Arrays) -> tuple[list[str], Arrays, int]:
        """(problems, the uploaded tensors, the sample count) of a train reply.

        Everything in a reply is what a client chose to send: records of another
        type, tensor bytes that are no array, a count that is a string or rounds
        to zero must all become a problem for this reply, never an exception
        that stops the server."""
        content = msg.content
        if "arrays" not in content or "metrics" not in content:
            return ["reply lacks arrays or metrics"], {}, 0
        try:
            arrays = unpack(content["arrays"])
        except WireError as exc:
            return [str(exc)], {}, 0
        problems = upload_problems(arrays, expected)
        value = content["metrics"].get("num-examples")
        count = 0
        if (p := count_problems(value)) is not None:
            problems.append(p)
        elif (count := int(float(value))) < 1:  # type: ignore[arg-type]  # a number, count_problems says
            problems.append(f"num-examples {value!r} is less than one sample")
        return problems, arrays, count

    def _record_seconds(self, server_round: int, scenario: str, phase: str, metrics: dict) -> None:
        if not any(k.startswith("time.") for k in metrics):
            return
        row = client_seconds(server_round, scenario, phase, metrics)
        self.timings.append(row)
        if self.run_dir is not None:
            path = self.run_dir / "client_seconds.csv"
            new = not path.exists()
            with path.open("a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(row))
                if new:
                    writer.writeheader()
                writer.writerow(row)

    # -- evaluation ----------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        if self.eval_with_train and server_round < self.num_rounds:
            return []  # evaluated by the next round's train messages
        return self._evaluate_messages(server_round, config, grid)

    def _evaluate_messages(self, server_round: int, config: ConfigRecord, grid: Grid) -> list[Message]:
        if not self.eval_due(server_round) or self.state.init is None:
            return []
        mapping = self._resolve(grid, sorted(grid.get_node_ids()))
        cfg = {**dict(config), "server-round": server_round, "splits": self.eval_splits}
        if server_round == self.num_rounds and self.run_dir is not None:
            cfg["checkpoint-dir"] = str(self.run_dir / "checkpoints")
        return self._messages(mapping, MessageType.EVALUATE, cfg)

    def eval_due(self, server_round: int) -> bool:
        return server_round > 0 and (server_round % self.eval_every == 0 or server_round == self.num_rounds)

    def evaluate_round(self, grid: Grid, server_round: int) -> None:
        """Evaluate one round outside Flower's loop: a resumed run whose checkpointed
        round was aggregated but not evaluated before the server stopped."""
        grid = self._grid(grid)
        self._wait_for_nodes(grid)
        messages = self._evaluate_messages(server_round, ConfigRecord(), grid)
        if messages:
            replies = grid.send_and_receive(messages, timeout=self.round_timeout)
            self.aggregate_evaluate(server_round - self.round_offset, replies)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        rows: list[dict] = []
        for msg in replies:
            if (scenario := self._reply_scenario(msg, server_round, "evaluation")) is None:
                continue
            rows += self._eval_rows(msg, server_round, scenario)
            if "metrics" in msg.content:
                self._record_seconds(server_round, scenario, "evaluate", dict(msg.content["metrics"]))
        return self._record_evaluation(server_round, rows)

    @staticmethod
    def _eval_rows(msg: Message, server_round: int, scenario: str) -> list[dict]:
        if "metrics" not in msg.content:
            log(WARNING, "round %d: evaluation reply for %s lacks metrics; dropped", server_round, scenario)
            return []
        return report.rows_from_metrics(server_round, scenario, dict(msg.content["metrics"]))

    def _record_evaluation(self, server_round: int, rows: list[dict]) -> MetricRecord | None:
        """Keep, write and log one round's evaluation rows; their means as a MetricRecord."""
        if not rows:
            return None
        self.rows += rows
        if self.run_dir is not None:
            report.append_csv(self.run_dir / "metrics.csv", rows)
        for split in self.eval_splits:
            lines = report.round_table(rows, split)
            if len(lines) > 1:
                log(INFO, "Round %d, %s split:", server_round, split)
                for line in lines:
                    log(INFO, "  %s", line)
        out: dict[str, float] = {}
        for split in self.eval_splits:
            for metric in ("auc", "logloss"):
                value = report.mean_of([r for r in rows if r["split"] == split], metric)
                if not np.isnan(value):
                    out[f"{split}.mean.{metric}"] = value
        return MetricRecord(out)
