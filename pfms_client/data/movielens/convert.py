"""MovieLens-100K as multi-scenario, multi-task data: one Tenrec-layout CSV per user group.

The raw RecBole atomic files (``ml-100k.inter/.user/.item``, fetched once by
``python -m pfms_client.data.movielens fetch``) are converted on first use,
like the synthetic data are generated: ``load_scenario`` writes a missing
``{root}/{scenario}.csv`` (plus a ``.meta.json`` with its rates). A scenario is
a user group (``dataset.source.grouping``: age bands, gender, ...); the tasks
are ``like`` (rating >= like_min_rating) and ``love`` (rating >= love_min_rating),
so love implies like. Token features (gender, occupation, release year) are
coded by their rank among all values of the raw table, so a code means the same
in every scenario; genres become one 0/1 column per genre.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataValidationError
from ..files import RATE_DIGITS, check_made_with, publish_scenario_file, sidecar_path
from ..settings import DatasetSettings
from .fetch import RAW_FILES, fetch_raw
from .recbole_files import FIRST_DATA_LINE, fail_at_first, int_column, number_column, read_recbole_file

FETCH_COMMAND = "python -m pfms_client.data.movielens fetch"
AGE = "age"  # the grouping by inclusive [min, max] age ranges; also the age_band feature
GENRE_PREFIX = "genre_"  # schema.numerical columns with this prefix are the genre flags
RATING_DECIMALS = 2

_INTER = ("user_id", "item_id", "rating", "timestamp")
_USER = ("user_id", "age", "gender", "occupation")
_ITEM = ("item_id", "release_year", "class")


@dataclass(frozen=True)
class MovieLensSource:
    """The ``dataset.source`` node (keys checked by DatasetSettings, values here)."""

    raw_dir: Path
    grouping: str
    groups: dict[str, dict[str, list[Any]]]
    like_min_rating: float
    love_min_rating: float

    @classmethod
    def from_dict(cls, node: Mapping[str, Any]) -> MovieLensSource:
        groups = node["groups"]
        if not isinstance(groups, Mapping) or AGE not in groups:
            raise ValueError(f"dataset.source.groups must be a mapping with an '{AGE}' entry")
        clean = {str(g): _group_node(g, spec) for g, spec in groups.items()}
        grouping = str(node["grouping"])
        if grouping not in clean:
            raise ValueError(
                f"dataset.source.grouping: {grouping!r} is not one of "
                f"dataset.source.groups {sorted(clean)}"
            )
        for key in ("like_min_rating", "love_min_rating"):
            v = node[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1 <= v <= 5:
                raise ValueError(f"dataset.source.{key}={v!r}: expected a number in [1, 5] (a rating)")
        like, love = float(node["like_min_rating"]), float(node["love_min_rating"])
        if love < like:
            raise ValueError(
                "dataset.source: love_min_rating must be >= like_min_rating (love implies like)"
            )
        return cls(Path(str(node["raw_dir"])), grouping, clean, like, love)

    @property
    def scenario_groups(self) -> dict[str, list[Any]]:
        return self.groups[self.grouping]

    def params(self) -> dict[str, Any]:
        """What the converted files depend on (not where the raw files lie).

        Groups as ``[name, values]`` pairs: their order sets the age_band codes,
        and a JSON object would not keep it.
        """
        return {
            "grouping": self.grouping,
            "scenario_groups": [[k, v] for k, v in self.scenario_groups.items()],
            "age_bands": [[k, v] for k, v in self.groups[AGE].items()],
            "like_min_rating": self.like_min_rating,
            "love_min_rating": self.love_min_rating,
        }


def fetch_command(raw_dir: Path) -> str:
    """The exact command that puts the raw files where this config expects them."""
    return f"{FETCH_COMMAND} {shlex.quote(f'dataset.source.raw_dir={raw_dir}')}"


def convert(source: MovieLensSource, genre_columns: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Read and check the raw files; one frame per group, rows by time.

    Columns: user_id, item_id, like, love, gender, age_band, occupation,
    release_year, the genre flags, then rating and timestamp (kept for
    reference; the schema must not use them as features).
    """
    inter, users, items, paths = _read_raw(source)
    user_pos = _lookup(users["user_id"], inter["user_id"], paths["inter"], "user_id", paths["user"])
    item_pos = _lookup(items["item_id"], inter["item_id"], paths["inter"], "item_id", paths["item"])
    rating = inter["rating"]
    fail_at_first(rating < 0, paths["inter"], "rating", lambda row: "negative rating")

    age_band = _assign(users[AGE], source.groups[AGE], AGE, paths["user"], ranges=True)
    if source.grouping == AGE:
        scenario_of_user = age_band
    else:
        scenario_of_user = _assign(
            users["group_token"], source.scenario_groups, source.grouping, paths["user"], ranges=False
        )
    columns: dict[str, np.ndarray] = {
        "user_id": inter["user_id"],
        "item_id": inter["item_id"],
        "like": (rating >= source.like_min_rating).astype(np.int64),
        "love": (rating >= source.love_min_rating).astype(np.int64),
        "gender": users["gender"][user_pos],
        "age_band": age_band[user_pos] + 1,
        "occupation": users["occupation"][user_pos],
        "release_year": items["release_year"][item_pos],
    }
    flags = _genre_flags(items["class"], genre_columns, paths["item"])
    columns.update({col: flags[:, j][item_pos] for j, col in enumerate(genre_columns)})
    columns.update({"rating": rating, "timestamp": inter["timestamp"]})
    frame = pd.DataFrame(columns)
    frame["_scenario"] = scenario_of_user[user_pos]
    frame = frame.sort_values(["timestamp", "user_id", "item_id"], kind="stable")
    names = list(source.scenario_groups)
    return {
        name: frame[frame["_scenario"] == k].drop(columns="_scenario").reset_index(drop=True)
        for k, name in enumerate(names)
    }


def ensure_converted(settings: DatasetSettings, scenarios: Sequence[str]) -> None:
    """Convert the scenarios whose files are missing; an existing file must match the source."""
    if settings.source is None:
        return
    source = MovieLensSource.from_dict(settings.source)
    if "{scenario}" not in str(settings.scenario_file):
        raise ValueError("dataset.source needs a scenario_file containing '{scenario}'")
    for scenario in scenarios:
        settings.check_scenario(scenario)
        if scenario not in source.scenario_groups:
            raise ValueError(
                f"scenario {scenario!r} is not a group of dataset.source.groups.{source.grouping} "
                f"{list(source.scenario_groups)}"
            )
    missing = [s for s in scenarios if not settings.scenario_path(s).is_file()]
    if missing:
        genre_columns = [c for c in settings.schema.numerical if c.startswith(GENRE_PREFIX)]
        frames = convert(source, genre_columns)
        raw_sha = {name: _sha256(source.raw_dir / name) for name in RAW_FILES.values()}
        for scenario in missing:
            _write(settings.scenario_path(scenario), scenario, frames[scenario], source, raw_sha)
    for scenario in scenarios:
        path = settings.scenario_path(scenario)
        check_made_with(
            path,
            source.params(),
            f"delete {path} to rebuild it from {source.raw_dir}, or point dataset.root elsewhere",
        )


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: fetch the raw files, convert every configured scenario, print their sizes and rates."""
    parser = argparse.ArgumentParser(
        prog="python -m pfms_client.data.movielens", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser(
        "fetch", help="download recbole's wheel with pip, extract ml-100k, convert"
    )
    fetch.add_argument(
        "--wheel", type=Path, help="use this recbole-1.2.1 wheel instead of downloading"
    )
    fetch.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides, e.g. dataset.source.grouping=gender paths.home=/data/pfms",
    )
    args = parser.parse_args(argv)

    from ...config import load_config  # only the CLI composes the config itself

    cfg = load_config(["dataset=movielens", *args.overrides])
    settings = DatasetSettings.from_config(cfg.dataset)
    source = MovieLensSource.from_dict(settings.source or {})
    for path in fetch_raw(source.raw_dir, args.wheel):
        print(f"wrote {path}")
    ensure_converted(settings, settings.scenarios)
    for scenario in settings.scenarios:
        meta = _read_meta(settings.scenario_path(scenario))
        r = meta["rates"]
        print(
            f"{scenario}: {meta['rows']} rows, {meta['users']} users, {meta['items']} items | "
            f"like {r['like']:.4f} love {r['love']:.4f} love|like {r['love_given_like']:.4f}"
        )
    print(f"scenario files in {settings.root}")


def _read_raw(source: MovieLensSource) -> tuple[dict, dict, dict, dict[str, Path]]:
    hint = f"fetch it with: {fetch_command(source.raw_dir)}"
    paths = {kind: source.raw_dir / name for kind, name in RAW_FILES.items()}
    user_cols = _USER + ((source.grouping,) if source.grouping not in _USER else ())
    inter_df = read_recbole_file(paths["inter"], _INTER, hint)
    user_df = read_recbole_file(paths["user"], user_cols, hint)
    item_df = read_recbole_file(paths["item"], _ITEM, hint)
    inter = {
        "user_id": _ids(inter_df, "user_id", paths["inter"]),
        "item_id": _ids(inter_df, "item_id", paths["inter"]),
        "rating": number_column(inter_df, "rating", paths["inter"]),
        "timestamp": _ids(inter_df, "timestamp", paths["inter"]),
    }
    users: dict[str, np.ndarray] = {
        "user_id": _unique_ids(user_df, "user_id", paths["user"]),
        AGE: int_column(user_df, AGE, paths["user"]),
        "gender": _codes(user_df["gender"]),
        "occupation": _codes(user_df["occupation"]),
    }
    if source.grouping != AGE:
        users["group_token"] = user_df[source.grouping].to_numpy(dtype=str)
    items = {
        "item_id": _unique_ids(item_df, "item_id", paths["item"]),
        "release_year": _codes(item_df["release_year"]),
        "class": item_df["class"].to_numpy(dtype=str),
    }
    return inter, users, items, paths


def _ids(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = int_column(df, column, path)
    fail_at_first(values < 0, path, column, lambda row: "negative id")
    return values


def _unique_ids(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = _ids(df, column, path)
    fail_at_first(pd.Series(values).duplicated().to_numpy(), path, column,
                  lambda row: f"duplicate {column} {values[row]}")
    return values


def _codes(tokens: pd.Series) -> np.ndarray:
    """Code 1..K = rank among the table's distinct tokens, so the same in every scenario."""
    _, inverse = np.unique(tokens.to_numpy(dtype=str), return_inverse=True)
    return (inverse + 1).astype(np.int64)


def _lookup(
    keys: np.ndarray, wanted: np.ndarray, path: Path, column: str, table: Path
) -> np.ndarray:
    """Row of each ``wanted`` id in ``keys``; an unknown id is an error at its line of ``path``."""
    pos = pd.Index(keys).get_indexer(wanted)
    fail_at_first(pos < 0, path, column, lambda row: f"{column} {wanted[row]} is not in {table.name}")
    return pos


def _assign(
    values: np.ndarray, groups: dict[str, list[Any]], column: str, path: Path, ranges: bool
) -> np.ndarray:
    """Index of the group each user falls in; a user in no group is an error at its line."""
    group = np.full(len(values), -1, dtype=np.int64)
    for k, spec in enumerate(groups.values()):
        if ranges:
            lo, hi = spec
            hit = (values >= lo) & (values <= hi)
        else:
            hit = np.isin(values, [str(v) for v in spec])
        group[hit & (group < 0)] = k
    fail_at_first(group < 0, path, column,
                  lambda row: f"{column} {values[row]!r} is in no group of dataset.source.groups.{column} {groups}")
    return group


def genre_column(genre: str) -> str:
    """``Children's`` -> ``genre_childrens``, ``Film-Noir`` -> ``genre_film_noir``."""
    slug = re.sub(r"[^a-z0-9]+", "_", genre.lower().replace("'", "")).strip("_")
    return GENRE_PREFIX + slug


def _genre_flags(classes: np.ndarray, genre_columns: Sequence[str], path: Path) -> np.ndarray:
    """[items, genres] 0/1; a genre without a declared column is an error, not dropped."""
    index = {col: j for j, col in enumerate(genre_columns)}
    flags = np.zeros((len(classes), len(genre_columns)), dtype=np.int64)
    for row, text in enumerate(classes):
        for genre in text.split():
            col = genre_column(genre)
            if col not in index:
                raise DataValidationError(
                    path,
                    f"genre {genre!r} has no column: declare {col} in schema.numerical",
                    column="class",
                    line=row + FIRST_DATA_LINE,
                )
            flags[row, index[col]] = 1
    return flags


def _group_node(name: Any, spec: Any) -> dict[str, list[Any]]:
    where = f"dataset.source.groups.{name}"
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"{where}: expected a non-empty mapping scenario -> values")
    out: dict[str, list[Any]] = {}
    if name == AGE:
        bounds = []
        for scenario, rng in spec.items():
            ok = isinstance(rng, (list, tuple)) and len(rng) == 2
            if not ok or not all(isinstance(v, int) for v in rng) or rng[0] > rng[1]:
                raise ValueError(
                    f"{where}.{scenario}: expected [min_age, max_age] integers, min <= max"
                )
            bounds.append((rng[0], rng[1], scenario))
            out[str(scenario)] = [int(rng[0]), int(rng[1])]
        bounds.sort()
        for (_, hi, a), (lo, _, b) in zip(bounds, bounds[1:]):
            if lo <= hi:
                raise ValueError(f"{where}: age ranges of {a!r} and {b!r} overlap")
        return out
    seen: dict[str, str] = {}
    for scenario, values in spec.items():
        values = [values] if isinstance(values, (str, int)) else values
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"{where}.{scenario}: expected a non-empty list of values")
        for v in values:
            if str(v) in seen:
                raise ValueError(f"{where}: value {v!r} is in both {seen[str(v)]!r} and {scenario!r}")
            seen[str(v)] = str(scenario)
        out[str(scenario)] = [str(v) for v in values]
    return out


def _write(
    path: Path, scenario: str, frame: pd.DataFrame, source: MovieLensSource, raw_sha: dict[str, str]
) -> None:
    header = list(frame.columns)
    decimals = [RATING_DECIMALS if c == "rating" else None for c in header]
    like, love = frame["like"].to_numpy(), frame["love"].to_numpy()
    meta = {
        "scenario": scenario,
        "params": source.params(),
        "file": path.name,
        "rows": len(frame),
        "users": int(frame["user_id"].nunique()),
        "items": int(frame["item_id"].nunique()),
        "rates": {
            "like": _rate(like),
            "love": _rate(love),
            "love_given_like": _rate(love[like == 1]),
        },
        "raw_sha256": raw_sha,
    }
    arrays = [frame[c].to_numpy() for c in header]
    publish_scenario_file(path, header, arrays, decimals, meta, scenario)


def _rate(x: np.ndarray) -> float | None:
    return round(float(x.mean()), RATE_DIGITS) if len(x) else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_meta(csv_path: Path) -> dict[str, Any]:
    return json.loads(sidecar_path(csv_path).read_text())


if __name__ == "__main__":
    main()
