"""Shared-id embeddings on the client: bucket maps, touched-row counts, touched-row uploads."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF_DATASET as CONF, FIXTURES
from pfms_client.data import open_scenario
from pfms_client.data.batches import batch_indices
from pfms_client.data.readers import read_scenario
from pfms_client.data.settings import DatasetSettings
from pfms_client.data.tensors import TensorSplit, build_scenario_data
from pfms_client.mmoe import build_model
from pfms_client.shared_embedding import (
    OOV_ROW,
    Pending,
    SharedEmbeddings,
    add_pending,
    bucket_map,
    bucket_of,
    capped_upload,
    expected_collision_rate,
    measured_collision_rate,
    touched_upload,
)
from pfms_client.template import Group, classify, unsigned_for, uploaded_names
from pfms_client.trainer import TrainConfig, train_local

MODEL = OmegaConf.create({"embed_dim": 4, "template": {"global": 1, "scenario": 1, "task": 1},
                          "expert_hidden": [8], "tower_hidden": [4], "dropout": 0.0, "bn_momentum": 0.1,
                          "output_bias": "zero"})
FIELDS = ["site", "item", "year"]


def test_same_raw_id_same_bucket_in_two_scenarios_and_oov_row_zero():
    a_vocab = np.array([3, 10, 42, 1000, 2**40], dtype=np.int64)  # scenario A's kept raw ids (sorted)
    b_vocab = np.array([-7, 10, 11, 42, 2**40], dtype=np.int64)  # B's: overlaps in 10, 42, 2**40
    a, b = bucket_map("item_id", a_vocab, 64, seed=0), bucket_map("item_id", b_vocab, 64, seed=0)
    assert a[0] == b[0] == OOV_ROW == 0  # local index 0 = out of vocabulary, on every node
    assert a.min(initial=1) >= 0 and a[1:].min() >= 1 and a.max() <= 64 and b[1:].min() >= 1 and b.max() <= 64
    for raw in (10, 42, 2**40):  # same raw id -> same row, whatever its local index
        assert a[1 + int(np.searchsorted(a_vocab, raw))] == b[1 + int(np.searchsorted(b_vocab, raw))]
    # deterministic across calls; another field name or seed spreads the ids differently
    np.testing.assert_array_equal(a, bucket_map("item_id", a_vocab, 64, seed=0))
    ids = np.arange(5000)
    assert (bucket_of("item_id", ids, 1 << 20, 0) != bucket_of("release_year", ids, 1 << 20, 0)).mean() > 0.99
    assert (bucket_of("item_id", ids, 1 << 20, 0) != bucket_of("item_id", ids, 1 << 20, 1)).mean() > 0.99


def test_collision_rate_formula_matches_hashing():
    ids = np.arange(20_000)
    rows = bucket_of("categorical_5", ids[:1682], 16384, 0)
    assert expected_collision_rate(1682, 16384) == pytest.approx(1 - (1 - 1 / 16384) ** 1681)
    assert measured_collision_rate(rows) == pytest.approx(expected_collision_rate(1682, 16384), abs=0.03)
    assert measured_collision_rate(np.array([1, 2, 2, 3])) == 0.5 and expected_collision_rate(1, 8) == 0.0


def _tenrec_cfg(store):
    node = OmegaConf.create({"seed": 0, "paths": {"data": "/unused"}})
    node.dataset = OmegaConf.load(CONF / "tenrec.yaml")
    cfg = OmegaConf.to_container(node, resolve=True)["dataset"]
    cfg.update(root=str(FIXTURES / "tenrec"), scenarios=["QK-video", "QB-video"], store_dir=str(store))
    cfg["schema"]["shared_fields"] = ["item_id", "video_category"]
    return cfg


def test_store_and_in_memory_paths_give_the_same_vocabularies_and_buckets(tmp_path):
    cfg = _tenrec_cfg(tmp_path)
    settings = DatasetSettings.from_config(cfg)
    shared = SharedEmbeddings(True, 256, 0)
    maps = {}
    for scenario in ("QK-video", "QB-video"):
        mapped = open_scenario(cfg, scenario)  # the prepared store (read_vocab)
        frames = build_scenario_data(scenario, *read_scenario(settings, scenario), settings)  # in memory
        assert len(mapped.vocabularies) == len(frames.vocabularies) == len(settings.schema.categorical)
        for v_store, v_mem, dim in zip(mapped.vocabularies, frames.vocabularies, mapped.field_dims):
            np.testing.assert_array_equal(v_store, v_mem)
            assert v_store.dtype == np.int64 and len(v_store) + 1 == dim
        assert mapped.in_memory().vocabularies is mapped.vocabularies
        maps[scenario] = (mapped, shared.bucket_maps(mapped.categorical_names, settings.schema.shared_fields,
                                                     mapped.vocabularies))
    (qk, qk_maps), (qb, qb_maps) = maps["QK-video"], maps["QB-video"]
    col = qk.categorical_names.index("video_category")  # the fixture's two apps share categories, not items
    common = np.intersect1d(qk.vocabularies[col], qb.vocabularies[col])
    assert len(common) >= 2
    rows_qk = qk_maps["video_category"][1 + np.searchsorted(qk.vocabularies[col], common)]
    rows_qb = qb_maps["video_category"][1 + np.searchsorted(qb.vocabularies[col], common)]
    np.testing.assert_array_equal(rows_qk, rows_qb)
    assert not np.array_equal(qk.vocabularies[col], qb.vocabularies[col]) or len(common) == len(qk.vocabularies[col])


def _toy(seed=0, n=200):
    g = torch.Generator().manual_seed(seed)
    x_cat = torch.stack([torch.zeros(n, dtype=torch.long), torch.randint(0, 30, (n,), generator=g),
                         torch.randint(0, 6, (n,), generator=g)], dim=1)
    y = (torch.rand(n, 2, generator=g) < 0.3).float()
    y[:, 1] *= y[:, 0]
    return TensorSplit(x_cat, torch.rand(n, 3, generator=g), y)


def _maps():
    return {"item": bucket_map("item", np.arange(100, 129), 50, 0),  # 30 indices, 29 raw ids
            "year": bucket_map("year", np.arange(1990, 1995), 50, 0)}


def _model(maps=None):
    extra = {"shared_buckets": maps, "shared_rows": 51, "field_names": FIELDS} if maps else {}
    return build_model(MODEL, [1, 30, 6], 3, 2, seed=7, **extra)


def test_switch_off_builds_todays_model_and_on_keeps_every_other_tensor():
    today = build_model(MODEL, [1, 30, 6], 3, 2, seed=7)
    off = build_model(MODEL, [1, 30, 6], 3, 2, seed=7, shared_buckets={}, shared_rows=51, field_names=FIELDS)
    on = _model(_maps())
    assert list(off.state_dict()) == list(today.state_dict())
    assert all(torch.equal(off.state_dict()[k], v) for k, v in today.state_dict().items())
    shared_names = [k for k in on.state_dict() if k.startswith("shared_embedding.")]
    assert shared_names == ["shared_embedding.item.weight", "shared_embedding.year.weight"]
    assert on.state_dict()["shared_embedding.item.weight"].shape == (51, 4)
    assert on.state_dict()["embedding.weight"].shape == (1, 4)  # only the local field (site) stays
    for k, v in today.state_dict().items():  # built before the embeddings: same names, same values
        if not k.startswith(("embedding.", "numeric.")):  # built after the (smaller) local table
            assert torch.equal(on.state_dict()[k], v), k
    x = _toy()
    assert on(x.x_cat[:5], x.x_num[:5]).shape == (5, 2)


def test_touched_counts_are_a_bincount_of_the_trained_rows_and_the_upload_holds_only_them():
    maps, data = _maps(), _toy()
    model = _model(maps)
    cfg = TrainConfig(local_epochs=1, batch_size=32, lr=1e-2, weight_decay=0.0, mu=0.0, local_steps=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_local(model, data, {}, cfg, seed=5)
    trained = torch.cat(list(batch_indices(len(data), 32, torch.Generator().manual_seed(5), epochs=1, steps=3)))
    assert len(trained) == 96  # local_steps: only the 3 trained batches count
    counts = model.touched_counts()
    for j, field in enumerate(("item", "year")):
        rows = torch.as_tensor(maps[field])[data.x_cat[trained, j + 1]]
        expect = torch.bincount(rows, minlength=51)
        assert torch.equal(counts[f"shared_embedding.{field}.weight"], expect), field
    model.eval()
    model(data.x_cat, data.x_num)  # evaluation counts nothing
    assert torch.equal(counts["shared_embedding.year.weight"], model.touched_counts()["shared_embedding.year.weight"])
    tables = {n: model.state_dict()[n] for n in counts}
    up = touched_upload(tables, counts)
    for field in ("item", "year"):
        name = f"shared_embedding.{field}.weight"
        rows = up[f"shared_embedding.{field}.rows"]
        np.testing.assert_array_equal(rows, np.flatnonzero(counts[name].numpy()))
        np.testing.assert_array_equal(up[f"shared_embedding.{field}.counts"], counts[name].numpy()[rows])
        np.testing.assert_array_equal(up[f"shared_embedding.{field}.values"], tables[name].numpy()[rows])
        assert up[f"shared_embedding.{field}.counts"].sum() == 96 and len(rows) < 51
        # 51 rows index in a byte, and no count passes 96
        assert rows.dtype == np.uint8 and up[f"shared_embedding.{field}.counts"].dtype == np.uint8
        # touched rows moved
        at = torch.as_tensor(rows.astype(np.int64))  # torch reads a uint8 index as a mask
        assert not torch.equal(tables[name][at], before[name][at])
    assert set(up) == {f"shared_embedding.{f}.{p}" for f in ("item", "year") for p in ("rows", "counts", "values")}


def test_frozen_table_counts_nothing():
    model = _model(_maps())
    data = _toy()
    cfg = TrainConfig(local_epochs=1, batch_size=32, lr=1e-2, weight_decay=0.0, mu=0.0, local_steps=2)
    heads = [n for n, _ in model.named_parameters() if n.startswith("towers.")]
    train_local(model, data, {}, cfg, seed=1, trainable=heads)  # FedRep's head phase
    assert all(int(c.sum()) == 0 for c in model.touched_counts().values())


def test_enabled_without_declared_fields_is_refused():
    with pytest.raises(ValueError, match="declares no schema.shared_fields"):
        SharedEmbeddings(True, 8, 0).bucket_maps(FIELDS, (), [np.arange(3)] * 3)
    assert SharedEmbeddings.from_strategy({"shared_embeddings": {"enabled": False, "buckets": 8,
                                                                  "hash_seed": 0}}).bucket_maps(FIELDS, ["item"], None) == {}


def test_touched_integers_travel_in_the_smallest_exact_unsigned_type():
    assert [unsigned_for(n) for n in (0, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1)] == [
        "uint8", "uint8", "uint16", "uint16", "uint32", "uint32", "uint64", "uint64"]
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="not an integer in"):
            unsigned_for(bad)
    # a default table (16,384 buckets + the OOV row) with one row looked up 70,000 times
    count = np.zeros(16385, np.int64)
    count[[0, 7, 16384]] = [3, 70_000, 1]
    table = np.arange(16385 * 2, dtype=np.float32).reshape(16385, 2)
    up = touched_upload({"shared_embedding.item.weight": table}, {"shared_embedding.item.weight": count})
    rows, counts = up["shared_embedding.item.rows"], up["shared_embedding.item.counts"]
    assert rows.dtype == np.uint16 and counts.dtype == np.uint32
    assert rows.tolist() == [0, 7, 16384] and counts.tolist() == [3, 70_000, 1]  # exact
    np.testing.assert_array_equal(up["shared_embedding.item.values"], table[[0, 7, 16384]])
    assert sum(a.nbytes for a in up.values()) == 3 * (2 + 4 + 2 * 4)
    empty = touched_upload({"shared_embedding.item.weight": table},
                           {"shared_embedding.item.weight": np.zeros(16385, np.int64)})
    assert [a.shape[0] for a in empty.values()] == [0, 0, 0] and empty["shared_embedding.item.rows"].dtype == np.uint16


def test_float16_delta_upload_sends_each_touched_rows_change():
    rng = np.random.default_rng(3)
    received = rng.normal(0, 0.1, (300, 8)).astype(np.float32)
    trained = received.copy()
    count = np.zeros(300, np.int64)
    count[[4, 9, 299]] = [2, 1, 500]
    trained[[4, 9, 299]] += rng.normal(0, 1e-3, (3, 8)).astype(np.float32)
    name = "shared_embedding.item.weight"
    up = touched_upload({name: torch.from_numpy(trained)}, {name: torch.from_numpy(count)},
                        {name: torch.from_numpy(received)})
    assert set(up) == {"shared_embedding.item.rows", "shared_embedding.item.counts", "shared_embedding.item.deltas"}
    deltas = up["shared_embedding.item.deltas"]
    assert deltas.dtype == np.float16 and deltas.shape == (3, 8)
    change = trained[[4, 9, 299]].astype(np.float64) - received[[4, 9, 299]]
    np.testing.assert_array_equal(deltas, change.astype(np.float16))
    # float16 keeps 11 significant bits of the change: the value is back to within 1e-3 of the change
    back = received[[4, 9, 299]] + deltas.astype(np.float64)
    assert np.abs(back - trained[[4, 9, 299]]).max() <= 1e-3 * np.abs(change).max()
    assert sum(a.nbytes for a in up.values()) == 3 * (2 + 2 + 8 * 2)  # uint16 rows (300 > 255), uint16 counts


def test_the_values_encoding_is_checked():
    node = {"enabled": True, "buckets": 8, "hash_seed": 0}
    assert not SharedEmbeddings.from_strategy({"shared_embeddings": node}).sends_deltas  # float32 by default
    assert SharedEmbeddings.from_strategy({"shared_embeddings": {**node, "values": "float16-delta"}}).sends_deltas
    with pytest.raises(ValueError, match="strategy.shared_embeddings.values='bf16': expected one of"):
        SharedEmbeddings.from_strategy({"shared_embeddings": {**node, "values": "bf16"}})


def _capped_case():
    """Two 2-wide tables: 'a' with rows 1, 2, 3 touched, 'b' with row 5 touched and row 7 pending."""
    received = {n: np.zeros((10, 2), np.float32) for n in ("shared_embedding.a.weight", "shared_embedding.b.weight")}
    tables = {n: t.copy() for n, t in received.items()}
    counts = {n: np.zeros(10, np.int64) for n in received}
    a, b = "shared_embedding.a.weight", "shared_embedding.b.weight"
    tables[a][[1, 2, 3]] = [[3.0, 0.0], [0.0, 0.5], [0.0, 4.0]]  # norms 3, 0.5, 4
    counts[a][[1, 2, 3]] = [4, 1, 2]
    tables[b][5] = [1.0, 1.0]  # norm 1.41
    counts[b][5] = 300
    pending = {b: Pending(np.array([5, 7]), np.array([2, 6]), np.array([[0.5, 0.5], [2.0, 0.0]], np.float32))}
    tables[b][[5, 7]] += pending[b].change  # added back onto the received table, then trained on
    return tables, counts, received, pending


def test_capped_upload_sends_the_largest_changes_and_keeps_the_rest_pending():
    tables, counts, received, pending = _capped_case()
    a, b = "shared_embedding.a.weight", "shared_embedding.b.weight"
    # 10 rows index in a byte, the largest count (302) needs uint16, 2 float32: 1 + 2 + 8 = 11 bytes a row
    up, left = capped_upload(tables, counts, received, pending, budget_bytes=3 * 11 + 10, deltas=False)
    # due: a1 (3), a2 (0.5), a3 (4), b5 (1.5 + 1.5 -> 2.12, 300 + 2 uses), b7 (2, pending only, 6 uses)
    assert up["shared_embedding.a.rows"].tolist() == [1, 3] and up["shared_embedding.b.rows"].tolist() == [5]
    assert up["shared_embedding.a.counts"].tolist() == [4, 2] and up["shared_embedding.b.counts"].tolist() == [302]
    np.testing.assert_array_equal(up["shared_embedding.b.values"], tables[b][[5]])
    assert sum(v.nbytes for v in up.values()) <= 3 * 11 + 10
    assert left[a].rows.tolist() == [2] and left[a].counts.tolist() == [1]
    np.testing.assert_array_equal(left[a].change, [[0.0, 0.5]])
    assert left[b].rows.tolist() == [7] and left[b].counts.tolist() == [6]  # kept with the uses gathered
    np.testing.assert_array_equal(left[b].change, [[2.0, 0.0]])
    # float16 deltas: 1 + 2 + 4 = 7 bytes a row, so the same budget sends 6 rows: all 5 due rows
    up, left = capped_upload(tables, counts, received, pending, budget_bytes=3 * 11 + 10, deltas=True)
    assert up["shared_embedding.a.rows"].tolist() == [1, 2, 3] and up["shared_embedding.b.rows"].tolist() == [5, 7]
    np.testing.assert_array_equal(up["shared_embedding.b.deltas"], np.array([[1.5, 1.5], [2.0, 0.0]], np.float16))
    assert all(len(p.rows) == 0 for p in left.values())
    # no budget: nothing goes, everything due stays
    up, left = capped_upload(tables, counts, received, pending, budget_bytes=0, deltas=False)
    assert all(len(v) == 0 for v in up.values())
    assert left[a].rows.tolist() == [1, 2, 3] and left[b].rows.tolist() == [5, 7]


def test_a_pending_change_is_added_back_onto_the_received_table():
    _, _, received, pending = _capped_case()
    b = "shared_embedding.b.weight"
    tables = {n: torch.from_numpy(t.copy()) for n, t in received.items()}
    kept = {k: torch.from_numpy(v) for k, v in pending[b].arrays(b).items()}
    back = Pending.from_arrays(kept, b)
    assert Pending.from_arrays(kept, "shared_embedding.a.weight") is None
    add_pending(tables, {b: back})
    np.testing.assert_array_equal(tables[b].numpy()[[5, 7]], pending[b].change)
    assert float(tables[b].abs().sum()) == pytest.approx(3.0) and float(tables["shared_embedding.a.weight"].abs().sum()) == 0


def test_the_upload_cap_is_checked():
    node = {"enabled": True, "buckets": 8, "hash_seed": 0}
    assert not SharedEmbeddings.from_strategy({"shared_embeddings": node}).capped
    assert SharedEmbeddings.from_strategy({"shared_embeddings": {**node, "upload_cap": 0.25}}).upload_cap == 0.25
    for bad in (0, -0.5, float("inf")):
        with pytest.raises(ValueError, match=f"upload_cap={bad}: expected a number > 0 or null"):
            SharedEmbeddings.from_strategy({"shared_embeddings": {**node, "upload_cap": bad}})


def test_residual_rows_start_at_zero_learn_the_node_s_own_part_and_stay_home():
    maps, data = _maps(), _toy()
    plain = _model(maps)
    model = build_model(MODEL, [1, 30, 6], 3, 2, seed=7, shared_buckets=maps, shared_rows=51, field_names=FIELDS,
                        shared_residual=True)
    state = model.state_dict()
    assert set(state) - set(plain.state_dict()) == {"shared_residual.weight"}
    assert state["shared_residual.weight"].shape == (30 + 6, 4) and not state["shared_residual.weight"].any()
    for k, v in plain.state_dict().items():  # built last: every other tensor starts as without it
        assert torch.equal(state[k], v), k
    model.eval(), plain.eval()
    assert torch.equal(model(data.x_cat, data.x_num), plain(data.x_cat, data.x_num))
    cfg = TrainConfig(local_epochs=1, batch_size=32, lr=1e-2, weight_decay=0.0, mu=0.0, local_steps=None)
    train_local(model, data, {}, cfg, seed=5)
    res = model.state_dict()["shared_residual.weight"]
    seen_items = torch.unique(data.x_cat[:, 1])  # item indices 0..29 sit at residual rows 0..29
    assert res[seen_items].abs().sum(1).gt(0).all()
    unseen = torch.tensor(sorted(set(range(30)) - set(seen_items.tolist())), dtype=torch.long)
    assert not res[unseen].any()  # ids no batch used keep zero
    # the residual's id reads its shared row plus its own row
    with torch.no_grad():
        x = data.x_cat[:3]
        rows = model.bucket_map_0[x[:, 1]]
        want = model.shared_embedding["item"](rows) + res[x[:, 1]]
        got = model._embed_fields(x)[:, 1]
    torch.testing.assert_close(got, want)
    assert classify("shared_residual.weight").group is Group.LOCAL
    assert uploaded_names(model.state_dict(), fedbn=True, share=["global", "scenario", "tower"]) == [
        n for n in uploaded_names(plain.state_dict(), fedbn=True, share=["global", "scenario", "tower"])]
