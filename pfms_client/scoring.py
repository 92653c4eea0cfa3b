"""``pfms-score``: a run's trained scenario model scores new rows, or is exported for serving.

    pfms-score RUN_DIR --scenario NL --input rows.csv --output scores.csv [--keep search_id]
    pfms-score RUN_DIR --export DIR [--scenario NL]

Scoring reads the input in the scenario's source format (CSV or Parquet, with the
training data's checks: pfms_client.data.readers.iter_checked_chunks), encodes it with
the scenario's own vocabulary and numeric transform saved next to its checkpoint
(pfms_client.trained_model; unseen ids -> the OOV index 0, as in training) and writes
one probability per task and row (columns ``p_<task>``) after the kept columns (by
default the schema's id columns), as CSV or Parquet by the output's extension. Rows go
through in batches of ``--batch-size`` (default: the run's ``eval.batch_size``, so the
run's own test split gets the very batches its evaluation had); memory is bounded by
the reader's chunks and one batch, whatever the row count. When the input has the label
columns, each task's AUC and LogLoss go to stdout (pfms_client.streamed_metrics: the
numbers the run's evaluation reports). Progress goes to stderr.

Exit 0 on success, 2 on bad input (run folder, scenario, checkpoint, encoding or rows):
one line naming the problem.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data.errors import DataValidationError
from .data.readers import SlowPathNeeded, iter_checked_chunks
from .data.store import task_label_matrix
from .data.schema import DatasetSchema
from .trained_model import TrainedModel, TrainedModelError, load_trained

OUTPUT_FORMATS = (".csv", ".parquet")
PROBABILITY_PREFIX = "p_"  # output column of task t: p_<task>
WRITE_ROWS = 131_072  # output rows gathered per write (a Parquet row group)
# torch intra-op threads while scoring (--threads): the CSV is parsed in threads of its own,
# and on the shared 2-core box torch's default (2) scored 50k rows 5-6x slower than 1 thread.
SCORE_THREADS = 1


class ScoringInputError(ValueError):
    """Input or output that cannot be scored as asked (one line for the user)."""


@dataclass(frozen=True)
class FeatureSchema:
    """The scenario's schema without labels, for input rows that carry none: the reader's
    checks need only these attributes (a DatasetSchema must have tasks, so labels)."""

    categorical: tuple[str, ...]
    numerical: tuple[str, ...]
    id_columns: tuple[str, ...]
    ignore_columns: tuple[str, ...]
    labels: tuple[str, ...] = ()
    constraints: tuple[Any, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        return self.id_columns + self.ignore_columns + self.categorical + self.numerical


@dataclass
class ScoreSummary:
    rows: int
    seconds: float
    output: Path
    metrics: dict[str, dict[str, float]] | None  # per task; None when the input has no labels


def input_header(path: Path) -> list[str]:
    if not path.is_file():
        raise ScoringInputError(f"{path}: " + ("is a directory, expected a file" if path.is_dir() else "file not found"))
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return list(pq.ParquetFile(path).schema_arrow.names)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ScoringInputError(f"{path}: not a readable Parquet file: {exc}") from None
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return next(csv.reader(fh), [])
    except UnicodeDecodeError:
        return []  # the reader names the undecodable bytes


def reading_schema(schema: DatasetSchema, header: Sequence[str]) -> DatasetSchema | FeatureSchema:
    """The full schema when the input has label columns (then metrics), else features only.
    Some but not all labels: the full schema, whose check names the missing one."""
    if any(label in header for label in schema.labels):
        return schema
    return FeatureSchema(schema.categorical, schema.numerical, schema.id_columns, schema.ignore_columns)


class _ColumnStream:
    """The kept columns of the input, read alongside the checked chunks, handed out by row count."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        import pyarrow as pa

        self.columns = columns
        self.pending: list[Any] = []
        self.held = 0
        if not columns:
            self.batches: Iterator[Any] = iter(())
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            self.batches = pq.ParquetFile(path).iter_batches(columns=columns)
        else:
            from pyarrow import csv as pacsv

            reader = pacsv.open_csv(
                path, parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
                convert_options=pacsv.ConvertOptions(include_columns=columns,
                                                     column_types={c: pa.string() for c in columns}))
            self.batches = iter(reader)

    def take(self, n: int) -> Any:
        import pyarrow as pa

        while self.held < n:
            batch = next(self.batches)
            self.pending.append(batch)
            self.held += batch.num_rows
        table = pa.Table.from_batches(self.pending).combine_chunks()
        head, rest = table.slice(0, n), table.slice(n)
        self.pending = rest.to_batches()
        self.held -= n
        return head


class _OutputWriter:
    """CSV or Parquet by extension, written to a temp file renamed into place at the end."""

    def __init__(self, path: Path, schema: Any) -> None:
        self.path, self.schema = path, schema
        self.tmp = path.with_name(f".{path.name}.partial")
        self.tables: list[Any] = []
        self.held = 0
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            self.writer: Any = pq.ParquetWriter(self.tmp, schema)
        else:
            from pyarrow import csv as pacsv

            self.writer = pacsv.CSVWriter(self.tmp, schema)

    def write(self, table: Any) -> None:
        self.tables.append(table)
        self.held += table.num_rows
        if self.held >= WRITE_ROWS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.tables:
            self.writer.write_table(pa.concat_tables(self.tables))
        self.tables, self.held = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()
        self.tmp.replace(self.path)

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


def _batches(chunks: Iterator[Any], batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Checked chunks regrouped into batches of exactly ``batch_size`` rows (the last: fewer)."""
    held: list[Any] = []
    rows = 0
    for chunk in chunks:
        held.append((chunk.cat, chunk.num, chunk.labels))
        rows += len(chunk)
        while rows >= batch_size:
            cat, num, lab = (np.concatenate(parts) if len(held) > 1 else parts[0] for parts in zip(*held))
            yield cat[:batch_size], num[:batch_size], lab[:batch_size]
            held, rows = [(cat[batch_size:], num[batch_size:], lab[batch_size:])], rows - batch_size
    if rows:
        cat, num, lab = (np.concatenate(parts) for parts in zip(*held))
        yield cat, num, lab


def check_output(path: Path) -> None:
    if path.suffix not in OUTPUT_FORMATS:
        raise ScoringInputError(f"{path}: output must end in {' or '.join(OUTPUT_FORMATS)} (the format follows it)")
    if not path.parent.is_dir():
        raise ScoringInputError(f"{path}: output folder {path.parent} not found")


def score_file(trained: TrainedModel, input_path: Path, output_path: Path, keep: Sequence[str] | None = None,
               batch_size: int | None = None, progress: Any = None) -> ScoreSummary:
    """Score every row of ``input_path`` into ``output_path``; metrics when it has labels.
    ``keep``: input columns copied to the output (None: the schema's id columns it has)."""
    input_path, output_path = Path(input_path), Path(output_path)
    check_output(output_path)
    enc = trained.encoding
    header = input_header(input_path)
    schema = reading_schema(enc.schema, header)
    kept = [c for c in enc.schema.id_columns if c in header] if keep is None else list(keep)
    probability_columns = [PROBABILITY_PREFIX + t for t in enc.task_names]
    for col in kept:
        if col not in header:
            raise ScoringInputError(f"{input_path}: column {col!r} to keep is not in its header")
        if col in probability_columns:
            raise ScoringInputError(f"column {col!r} to keep has the name of an output probability column")
    batch = int(batch_size or trained.config["eval"]["batch_size"])
    for engine in ("arrow", "pandas"):
        try:
            return _score(trained, schema, input_path, output_path, kept, probability_columns, batch, engine,
                          progress)
        except SlowPathNeeded:
            continue  # pyarrow refused what pandas accepts: the same rows again, slower
    raise AssertionError("unreachable: the pandas engine never asks for a slower path")


def _score(trained: TrainedModel, schema: Any, input_path: Path, output_path: Path, kept: list[str],
           probability_columns: list[str], batch: int, engine: str, progress: Any) -> ScoreSummary:
    import pyarrow as pa
    import torch

    from .streamed_metrics import StreamedTaskMetrics

    t0 = time.perf_counter()
    enc, model = trained.encoding, trained.model
    labelled = isinstance(schema, DatasetSchema)
    ids = _ColumnStream(input_path, kept)
    out_schema = pa.schema([*ids_schema(input_path, kept),
                            *(pa.field(c, pa.float32()) for c in probability_columns)])
    writer = _OutputWriter(output_path, out_schema)
    with tempfile.TemporaryDirectory(prefix=".pfms-score-", dir=output_path.parent) as spill:
        metrics = StreamedTaskMetrics(enc.task_names, Path(spill)) if labelled else None
        rows = 0
        try:
            chunks = iter_checked_chunks(input_path, schema, engine=engine)
            for cat, num, labels in _batches(chunks, batch):
                x_cat, x_num = enc.encode(cat, num)
                with torch.inference_mode():
                    p = torch.sigmoid(model(torch.from_numpy(x_cat), torch.from_numpy(x_num))).numpy()
                columns = ids.take(len(p)).columns if kept else []
                writer.write(pa.table([*columns, *(pa.array(p[:, t]) for t in range(p.shape[1]))],
                                      schema=out_schema))
                if metrics is not None:
                    metrics.add(task_label_matrix(labels, schema), p)
                rows += len(p)
                if progress is not None:
                    progress(f"score {input_path.name}", rows, None)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        result = metrics.result() if metrics is not None else None
    return ScoreSummary(rows, time.perf_counter() - t0, output_path, result)


def ids_schema(path: Path, kept: list[str]) -> list[Any]:
    """Arrow fields of the kept columns: Parquet's own types, CSV's text as read."""
    import pyarrow as pa

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        arrow = pq.ParquetFile(path).schema_arrow
        return [arrow.field(c) for c in kept]
    return [pa.field(c, pa.string()) for c in kept]


def metric_lines(scenario: str, metrics: dict[str, dict[str, float]]) -> list[str]:
    return [f"scenario={scenario} task={task} auc={m['auc']:.10f} logloss={m['logloss']:.10f} "
            f"n={int(m['n'])} positives={int(m['positives'])}" for task, m in metrics.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pfms-score", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder ($PFMS_HOME/runs/<run_name>)")
    parser.add_argument("--scenario", help="the scenario whose model scores (export: default every one)")
    parser.add_argument("--input", type=Path, help="rows to score: CSV or .parquet in the scenario's schema")
    parser.add_argument("--output", type=Path, help="where the probabilities go: .csv or .parquet")
    parser.add_argument("--keep", nargs="*", default=None,
                        help="input columns copied to the output (default: the schema's id columns)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per model call (default: eval.batch_size)")
    parser.add_argument("--threads", type=int, default=SCORE_THREADS,
                        help=f"torch intra-op threads (default {SCORE_THREADS}; 0 = torch's default)")
    parser.add_argument("--export", type=Path, default=None, metavar="DIR",
                        help="write each scenario's model as TorchScript with its manifest into DIR/<scenario>/")
    args = parser.parse_args(argv)
    try:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        if args.export is not None:
            from .export import export_run

            for folder in export_run(args.run_dir, args.export, [args.scenario] if args.scenario else None):
                print(f"exported {folder}", file=sys.stderr)
            return 0
        missing = [f"--{k}" for k in ("scenario", "input", "output") if getattr(args, k) is None]
        if missing:
            parser.error(f"scoring needs {', '.join(missing)} (or --export DIR)")
        from .data.prepare import ProgressLine

        check_output(args.output)
        trained = load_trained(args.run_dir, args.scenario)
        line = ProgressLine(args.scenario, stream=sys.stderr)
        # the first line after ProgressLine's interval, not on the first batch (no rate yet)
        line.phase, line.t_phase = f"score {args.input.name}", time.monotonic()
        line.t_last = line.t_phase
        summary = score_file(trained, args.input, args.output, args.keep, args.batch_size, line)
        line.done(f"{args.scenario}: scored {summary.rows:,} rows in {summary.seconds:.2f} s "
                  f"({summary.rows / max(summary.seconds, 1e-9):,.0f} rows/s) -> {summary.output}")
        if summary.metrics is not None:
            print("\n".join(metric_lines(args.scenario, summary.metrics)))
    except (TrainedModelError, ScoringInputError, DataValidationError) as exc:
        print(f"pfms-score: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
