"""MovieLens-100K conversion, on a hand-written fake in RecBole's atomic format (no real data).

Twelve users (three per age band, six of each gender), eight made-up movies,
three or four ratings per user.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import CONF_DATASET as CONF
from pfms_client.data import DataValidationError, load_scenario
from pfms_client.data.movielens import fetch as movielens_fetch
from pfms_client.data.movielens.convert import MovieLensSource, convert, ensure_converted, genre_column, main
from pfms_client.data.readers import read_csv_checked
from pfms_client.data.settings import DatasetSettings


USERS = """user_id:token	age:token	gender:token	occupation:token	zip_code:token
1	22	M	student	11111
2	24	F	student	22222
3	30	F	engineer	33333
4	33	M	artist	44444
5	40	M	doctor	55555
6	44	F	writer	66666
7	50	F	retired	77777
8	61	M	retired	88888
9	18	M	student	99999
10	27	F	engineer	10101
11	38	M	artist	12121
12	47	F	writer	13131
"""
ITEMS = """item_id:token	movie_title:token_seq	release_year:token	class:token_seq
1	Alpha One	1995	Animation Children's Comedy
2	Beta Two	1994	Action Thriller
3	Gamma	1990	Drama
4	Delta Four	1977	Sci-Fi Film-Noir
5	Epsilon	unknown	unknown
6	Zeta	1995	Romance Comedy
7	Eta Seven	1980	Western
8	Theta	1999	Horror Mystery
"""
# user, item, rating, timestamp
RATINGS = [
    (1, 1, 5, 100), (1, 2, 3, 101), (1, 3, 4, 102),
    (2, 1, 4, 103), (2, 6, 5, 104), (2, 8, 1, 105),
    (3, 3, 2, 106), (3, 4, 5, 107), (3, 5, 4, 108), (3, 7, 3, 109),
    (4, 2, 4, 110), (4, 4, 4, 111), (4, 6, 2, 112),
    (5, 1, 3, 113), (5, 7, 5, 114), (5, 8, 4, 115),
    (6, 2, 5, 116), (6, 3, 5, 117), (6, 5, 1, 118),
    (7, 1, 4, 119), (7, 4, 3, 120), (7, 6, 5, 121), (7, 8, 2, 122),
    (8, 3, 4, 123), (8, 5, 5, 124), (8, 7, 1, 125),
    (9, 2, 2, 126), (9, 4, 4, 127), (9, 6, 3, 128),
    (10, 1, 5, 129), (10, 3, 3, 130), (10, 8, 4, 131),
    (11, 5, 2, 132), (11, 6, 4, 133), (11, 7, 5, 134),
    (12, 2, 3, 135), (12, 4, 5, 136), (12, 8, 4, 137),
]  # fmt: skip
AGE_BANDS = {"under25": {1, 2, 9}, "25-34": {3, 4, 10}, "35-44": {5, 6, 11}, "45plus": {7, 8, 12}}


def _inter_text(rows=RATINGS) -> str:
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += ["\t".join(str(v) for v in r) for r in rows]
    return "\n".join(lines) + "\n"


@pytest.fixture
def raw(tmp_path) -> Path:
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "ml-100k.user").write_text(USERS)
    (folder / "ml-100k.item").write_text(ITEMS)
    (folder / "ml-100k.inter").write_text(_inter_text())
    return folder


def ml_cfg(tmp_path: Path, raw_dir: Path, **source_updates) -> dict:
    """conf/dataset/movielens.yaml with paths.data = tmp_path and the raw files in ``raw_dir``."""
    node = OmegaConf.create({"seed": 0, "paths": {"data": str(tmp_path)}})
    node.dataset = OmegaConf.load(CONF / "movielens.yaml")
    node.dataset.source.raw_dir = str(raw_dir)
    for key, value in source_updates.items():
        OmegaConf.update(node, f"dataset.source.{key}", value, merge=False)
    return OmegaConf.to_container(node, resolve=True)["dataset"]


def _frames(cfg: dict) -> dict[str, pd.DataFrame]:
    settings = DatasetSettings.from_config(cfg)
    ensure_converted(settings, settings.scenarios)
    return {
        s: read_csv_checked(settings.scenario_path(s), settings.schema) for s in settings.scenarios
    }


# ---------------------------------------------------------------- conversion


def test_age_groups_labels_and_features(tmp_path, raw):
    cfg = ml_cfg(tmp_path, raw)
    assert cfg["scenarios"] == list(AGE_BANDS)
    assert cfg["root"] == str(tmp_path / "movielens" / "by-age")
    frames = _frames(cfg)  # read_csv_checked also checks the love-requires-like constraint
    ratings = {(u, i): r for u, i, r, _ in RATINGS}
    for k, (scenario, users) in enumerate(AGE_BANDS.items()):
        df = frames[scenario]
        assert set(df["user_id"]) == users
        assert len(df) == sum(1 for r in RATINGS if r[0] in users)
        assert df["timestamp"].is_monotonic_increasing
        rating = np.array([ratings[(u, i)] for u, i in zip(df["user_id"], df["item_id"])])
        assert np.array_equal(df["rating"], rating)
        assert np.array_equal(df["like"], (rating >= 4).astype(int))
        assert np.array_equal(df["love"], (rating == 5).astype(int))
        assert set(df["age_band"]) == {k + 1}
    whole = pd.concat(frames.values())
    assert len(whole) == len(RATINGS) and (whole["love"] <= whole["like"]).all()
    # Token codes: rank among all raw values, so the same in every scenario.
    assert set(whole.loc[whole["user_id"].isin([2, 3, 6]), "gender"]) == {1}  # F < M
    assert set(whole.loc[whole["user_id"].isin([1, 4, 5]), "gender"]) == {2}
    assert set(whole.loc[whole["user_id"] == 4, "occupation"]) == {1}  # artist is first
    years = whole.drop_duplicates("item_id").set_index("item_id")["release_year"]
    assert years[1] == years[6] and years[4] == 1 and years[5] == 7  # 1977 first, 'unknown' last
    item1 = whole[whole["item_id"] == 1].iloc[0]
    flags = {c for c in whole.columns if c.startswith("genre_") and item1[c] == 1}
    assert flags == {"genre_animation", "genre_childrens", "genre_comedy"}
    item4 = whole[whole["item_id"] == 4].iloc[0]
    assert item4["genre_sci_fi"] == 1 and item4["genre_film_noir"] == 1 and item4["genre_drama"] == 0
    meta = json.loads((Path(cfg["root"]) / "under25.meta.json").read_text())
    assert meta["rows"] == 9 and meta["users"] == 3
    assert meta["rates"]["like"] == pytest.approx(frames["under25"]["like"].mean(), abs=1e-6)
    assert meta["rates"]["love"] == pytest.approx(2 / 9, abs=1e-6)


def test_gender_grouping_is_a_config_choice(tmp_path, raw):
    cfg = ml_cfg(tmp_path, raw, grouping="gender")
    assert cfg["scenarios"] == ["female", "male"] and cfg["root"].endswith("by-gender")
    frames = _frames(cfg)
    assert set(frames["female"]["user_id"]) == {2, 3, 6, 7, 10, 12}
    assert set(frames["male"]["user_id"]) == {1, 4, 5, 8, 9, 11}
    assert set(frames["female"]["age_band"]) == {1, 2, 3, 4}  # the age bands stay a feature


def test_load_scenario_converts_on_demand(tmp_path, raw):
    cfg = ml_cfg(tmp_path, raw)
    data = load_scenario(cfg, "45plus")
    assert len(data.train) + len(data.val) + len(data.test) == 10 and len(data.test) == 2
    assert data.task_names == ["like", "love"] and data.num_numerical == 19
    assert data.categorical_names[:2] == ["user_id", "item_id"]
    assert bool((data.train.y[:, 1] <= data.train.y[:, 0]).all())
    assert sorted(p.name for p in Path(cfg["root"]).glob("*.csv")) == ["45plus.csv"]


def test_existing_files_made_with_other_thresholds_are_rejected(tmp_path, raw):
    _frames(ml_cfg(tmp_path, raw))
    cfg = ml_cfg(tmp_path, raw, like_min_rating=3)
    with pytest.raises(DataValidationError, match="like_min_rating: 4.0 on disk vs 3.0") as info:
        ensure_converted(DatasetSettings.from_config(cfg), ["35-44"])
    assert "delete" in str(info.value) and info.value.file.endswith("35-44.meta.json")


# ---------------------------------------------------------------- bad raw files


def test_missing_raw_file_names_the_fetch_command(tmp_path, raw):
    (raw / "ml-100k.user").unlink()
    with pytest.raises(DataValidationError) as info:
        load_scenario(ml_cfg(tmp_path, raw), "under25")
    assert info.value.file == str(raw / "ml-100k.user")
    command = f"python -m pfms_client.data.movielens fetch dataset.source.raw_dir={raw}"
    assert command in str(info.value)


def test_missing_column(tmp_path, raw):
    occupation = 3  # drop the 4th field of every line
    lines = [line.split("\t") for line in USERS.splitlines()]
    text = "\n".join("\t".join(f[:occupation] + f[occupation + 1 :]) for f in lines) + "\n"
    (raw / "ml-100k.user").write_text(text)
    with pytest.raises(DataValidationError) as info:
        _frames(ml_cfg(tmp_path, raw))
    err = info.value
    assert (err.file, err.column, err.line) == (str(raw / "ml-100k.user"), "occupation", 1)
    assert "missing" in str(err)


def _sub(old_row: str, new_row: str):
    """Replace one whole data row of a raw file's text."""
    return lambda text: text.replace(f"\n{old_row}\n", f"\n{new_row}\n")


@pytest.mark.parametrize(
    "file, edit, column, line, words",
    [
        ("inter", _sub("3\t4\t5\t107", "3\t4\tfive\t107"), "rating", 9, "not a finite"),
        ("inter", _sub("4\t2\t4\t110", "44\t2\t4\t110"), "user_id", 12, "not in ml-100k.user"),
        ("inter", _sub("4\t2\t4\t110", "4\t2\t4"), None, 12, "3 tab-separated fields"),
        ("user", lambda t: t.replace("\n8\t61\t", "\n8\t171\t"), "age", 9, "in no group"),
        ("item", lambda t: t.replace("Western", "Noir"), "class", 8, "declare genre_noir"),
        ("item", lambda t: t.replace("item_id:token", "item_id"), None, 1, "not 'name:type'"),
    ],
)
def test_bad_raw_cells_name_file_column_and_line(tmp_path, raw, file, edit, column, line, words):
    path = raw / f"ml-100k.{file}"
    path.write_text(edit(path.read_text()))
    with pytest.raises(DataValidationError) as info:
        _frames(ml_cfg(tmp_path, raw))
    err = info.value
    assert (err.file, err.column, err.line) == (str(path), column, line)
    assert words in str(err)


@pytest.mark.parametrize(
    "updates, needle",
    [
        ({"grouping": "zip"}, "grouping"),
        ({"groups.age.45plus": [40, 150]}, "overlap"),
        ({"love_min_rating": 3}, "love_min_rating"),
        ({"groups.gender.male": ["M", "F"]}, "both"),
        ({"color": "red"}, "color"),
        ({"kind": "movielens-1m"}, "kind"),
    ],
)
def test_bad_source_config_is_rejected(tmp_path, raw, updates, needle):
    cfg = ml_cfg(tmp_path, raw)
    source = cfg["source"]
    for key, value in updates.items():
        *path, last = key.split(".")
        node = source
        for part in path:
            node = node[part]
        node[last] = value
    with pytest.raises(ValueError, match=needle):
        MovieLensSource.from_dict(DatasetSettings.from_config(cfg).source)


def test_source_is_only_for_the_tenrec_layout(tmp_path, raw):
    cfg = ml_cfg(tmp_path, raw)
    cfg.update(layout="aliexpress", scenario_dir="{scenario}", train_file="a", test_file="b")
    cfg.pop("scenario_file")
    cfg["split"] = {"val_fraction": 0.1, "seed": 0}
    with pytest.raises(ValueError, match="source"):
        DatasetSettings.from_config(cfg)


def test_genre_column_names():
    assert genre_column("Children's") == "genre_childrens"
    assert genre_column("Film-Noir") == "genre_film_noir" and genre_column("Sci-Fi") == "genre_sci_fi"


def test_convert_is_deterministic(tmp_path, raw):
    cfg = ml_cfg(tmp_path, raw)
    source, genres = MovieLensSource.from_dict(cfg["source"]), cfg["schema"]["numerical"]
    a, b = convert(source, genres), convert(source, genres)
    assert list(a) == list(AGE_BANDS) and all(a[s].equals(b[s]) for s in a)


# ---------------------------------------------------------------- fetch


def _fake_wheel(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(f"recbole/dataset_example/ml-100k/{name}", text)
        zf.writestr("recbole/__init__.py", "")
    return path


def test_extract_takes_only_the_three_files(tmp_path):
    members = {"ml-100k.inter": _inter_text(), "ml-100k.user": USERS, "ml-100k.item": ITEMS}
    wheel = _fake_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl", {**members, "ml-100k.kg": "x"})
    written = movielens_fetch.extract_raw(wheel, tmp_path / "raw")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(members)
    assert [p.read_text() for p in written] == [members[p.name] for p in written]
    broken = _fake_wheel(tmp_path / "broken.whl", {"ml-100k.inter": "x"})
    with pytest.raises(FileNotFoundError, match="ml-100k.user"):
        movielens_fetch.extract_raw(broken, tmp_path / "raw2")


def test_fetch_downloads_with_pip_no_deps(tmp_path, monkeypatch):
    members = {"ml-100k.inter": _inter_text(), "ml-100k.user": USERS, "ml-100k.item": ITEMS}
    calls = []

    def fake_run(cmd, check):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        _fake_wheel(dest / "recbole-1.2.1-py3-none-any.whl", members)

    monkeypatch.setattr(subprocess, "run", fake_run)
    movielens_fetch.fetch_raw(tmp_path / "raw")
    assert calls[0][2:6] == ["pip", "download", "recbole==1.2.1", "--no-deps"]
    assert (tmp_path / "raw" / "ml-100k.item").read_text() == ITEMS


def test_cli_fetches_and_converts(tmp_path, capsys):
    members = {"ml-100k.inter": _inter_text(), "ml-100k.user": USERS, "ml-100k.item": ITEMS}
    wheel = _fake_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl", members)
    main(["fetch", "--wheel", str(wheel), f"paths.home={tmp_path}", "dataset.source.grouping=gender"])
    out = capsys.readouterr().out
    assert "female: 20 rows, 6 users" in out and "male: 18 rows, 6 users" in out
    assert (tmp_path / "data" / "movielens" / "by-gender" / "male.csv").is_file()
