"""Column schema of a data set: which columns exist and what each one is for.

Built from the ``dataset.schema`` config node. Every column a file has must be
declared here (feature, label, id or ignored), so a renamed or extra column is
an error instead of being silently dropped or used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config_utils import check_keys, to_plain

_SCHEMA_KEYS = (
    "id_columns",
    "ignore_columns",
    "categorical",
    "numerical",
    "labels",
    "tasks",
    "constraints",
    "shared_fields",
)
_REQUIRED_KEYS = ("categorical", "numerical", "labels", "tasks")
_RANGE_KEYS = ("prefix", "start", "count")


@dataclass(frozen=True)
class TaskSpec:
    """One prediction task; its label is the AND of ``all_of`` label columns.

    CTCVR = click AND conversion is predicted over all impressions, which is
    why a task is a conjunction rather than a single column.
    """

    name: str
    all_of: tuple[str, ...]


@dataclass(frozen=True)
class Constraint:
    """``label`` = 1 is only valid where ``requires`` = 1 (e.g. no purchase without a click)."""

    label: str
    requires: str


@dataclass(frozen=True)
class DatasetSchema:
    """Declared columns, tasks and label constraints of one data set."""

    categorical: tuple[str, ...]
    numerical: tuple[str, ...]
    labels: tuple[str, ...]
    tasks: tuple[TaskSpec, ...]
    constraints: tuple[Constraint, ...] = ()
    id_columns: tuple[str, ...] = ()
    ignore_columns: tuple[str, ...] = ()
    # Categorical fields whose raw ids mean the same thing in every scenario (one id space):
    # what strategy.shared_embeddings may federate. Not part of the store's settings: it
    # changes no encoded row.
    shared_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for role, cols in self._roles().items():
            for col in cols:
                if col in seen:
                    raise ValueError(
                        f"schema: column '{col}' declared twice ({seen[col]} and {role})"
                    )
                seen[col] = role
        if not self.tasks:
            raise ValueError("schema.tasks: at least one task is required")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"schema.tasks: duplicate task names in {names}")
        for task in self.tasks:
            if not task.all_of:
                raise ValueError(f"schema.tasks: task '{task.name}' has an empty all_of")
            unknown = [c for c in task.all_of if c not in self.labels]
            if unknown:
                raise ValueError(
                    f"schema.tasks: task '{task.name}' uses {unknown}, not in labels {list(self.labels)}"
                )
        for col in self.shared_fields:
            if col not in self.categorical:
                raise ValueError(
                    f"schema.shared_fields: '{col}' is not a categorical column "
                    f"(categorical: {list(self.categorical)})"
                )
            if "." in col:
                raise ValueError(f"schema.shared_fields: '{col}' contains '.', which tensor names cannot hold")
        if len(set(self.shared_fields)) != len(self.shared_fields):
            raise ValueError(f"schema.shared_fields: a field is listed twice in {list(self.shared_fields)}")
        for con in self.constraints:
            for col in (con.label, con.requires):
                if col not in self.labels:
                    raise ValueError(
                        f"schema.constraints: '{col}' is not in labels {list(self.labels)}"
                    )

    def _roles(self) -> dict[str, tuple[str, ...]]:
        return {
            "id_columns": self.id_columns,
            "ignore_columns": self.ignore_columns,
            "categorical": self.categorical,
            "numerical": self.numerical,
            "labels": self.labels,
        }

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column a file must have, in declaration order."""
        return tuple(c for cols in self._roles().values() for c in cols)

    @property
    def unused_columns(self) -> tuple[str, ...]:
        """Columns that must be present but are never validated or used."""
        return self.id_columns + self.ignore_columns

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @classmethod
    def from_config(cls, dataset_cfg: Any) -> DatasetSchema:
        """Build from the whole ``dataset`` node (reads its ``schema`` child)."""
        node = to_plain(dataset_cfg)
        if not isinstance(node, Mapping) or "schema" not in node:
            raise ValueError("dataset config has no 'schema' node")
        return cls.from_schema_node(node["schema"])

    @classmethod
    def from_schema_node(cls, schema_node: Any) -> DatasetSchema:
        """Build from the ``dataset.schema`` node itself."""
        node = to_plain(schema_node)
        check_keys(node, "schema", _SCHEMA_KEYS, _REQUIRED_KEYS)
        return cls(
            id_columns=_columns(node.get("id_columns", []), "schema.id_columns"),
            ignore_columns=_columns(node.get("ignore_columns", []), "schema.ignore_columns"),
            categorical=_columns(node["categorical"], "schema.categorical"),
            numerical=_columns(node["numerical"], "schema.numerical"),
            labels=_columns(node["labels"], "schema.labels"),
            tasks=tuple(_task(t, i) for i, t in enumerate(node["tasks"] or [])),
            constraints=tuple(
                _constraint(c, i) for i, c in enumerate(node.get("constraints") or [])
            ),
            shared_fields=_columns(node.get("shared_fields", []), "schema.shared_fields"),
        )


def _columns(spec: Any, where: str) -> tuple[str, ...]:
    """A list of names, or ``{prefix, start, count}`` for numbered families like numerical_1..63."""
    if spec is None:
        return ()
    if isinstance(spec, Mapping):
        check_keys(spec, where, _RANGE_KEYS, _RANGE_KEYS)
        start, count = spec["start"], spec["count"]
        if not isinstance(start, int) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{where}: start and count must be integers, count >= 0")
        return tuple(f"{spec['prefix']}{i}" for i in range(start, start + count))
    if isinstance(spec, (list, tuple)):
        if not all(isinstance(c, str) and c for c in spec):
            raise ValueError(f"{where}: every column name must be a non-empty string")
        return tuple(spec)
    raise ValueError(f"{where}: expected a list of names or {{prefix, start, count}}")


def _task(node: Any, i: int) -> TaskSpec:
    where = f"schema.tasks[{i}]"
    check_keys(node, where, ("name", "all_of"), ("name", "all_of"))
    all_of = node["all_of"]
    if isinstance(all_of, str):
        all_of = [all_of]
    return TaskSpec(name=str(node["name"]), all_of=_columns(list(all_of), f"{where}.all_of"))


def _constraint(node: Any, i: int) -> Constraint:
    where = f"schema.constraints[{i}]"
    check_keys(node, where, ("label", "requires"), ("label", "requires"))
    return Constraint(label=str(node["label"]), requires=str(node["requires"]))
