"""Shared-id tables: count-weighted mean of the touched rows, untouched rows kept, validation."""

import numpy as np
import pytest

from pfms_server.aggregation import touched_problems, touched_row_mean, upload_problems, with_shared_embeddings
from pfms_server.aggregation.embeddings import absolute, touched_row_rate_mean
from pfms_server.aggregation.fedavg import fedavg_round
from pfms_server.aggregation.state import ServerState

TABLE = np.arange(12, dtype=np.float32).reshape(6, 2)  # row r = [2r, 2r + 1]
NAME = "shared_embedding.item_id.weight"


def touched(rows, counts, values, field="item_id"):
    """A touched-row answer for TABLE (6 rows: uint8 row numbers), counts as given (uint16 unless an array)."""
    return {f"shared_embedding.{field}.rows": np.array(rows).astype(np.uint8),
            f"shared_embedding.{field}.counts": counts if isinstance(counts, np.ndarray) else np.array(counts, np.uint16),
            f"shared_embedding.{field}.values": np.array(values, dtype=np.float32).reshape(len(rows), 2)}


def test_weighted_row_mean_by_hand():
    a = (np.array([1, 3]), np.array([3, 1]), np.array([[10.0, 20.0], [1.0, 1.0]], dtype=np.float32))
    b = (np.array([1, 4]), np.array([1, 2]), np.array([[-2.0, 0.0], [7.0, 8.0]], dtype=np.float32))
    out = touched_row_mean(TABLE, [a, b])
    # row 1: (3 * [10, 20] + 1 * [-2, 0]) / 4 = [7, 15]; row 3: only a; row 4: only b
    np.testing.assert_array_equal(out[1], [7.0, 15.0])
    np.testing.assert_array_equal(out[3], [1.0, 1.0])
    np.testing.assert_array_equal(out[4], [7.0, 8.0])
    for r in (0, 2, 5):  # untouched rows keep their value
        np.testing.assert_array_equal(out[r], TABLE[r])
    assert out.dtype == np.float32 and TABLE[1, 0] == 2.0  # the input is not changed


def test_one_client_sets_its_rows_and_counts_do_not_matter():
    one = (np.array([0, 5]), np.array([7, 1]), np.array([[1.5, 2.5], [3.5, 4.5]], dtype=np.float32))
    out = touched_row_mean(TABLE, [one])
    np.testing.assert_array_equal(out[[0, 5]], [[1.5, 2.5], [3.5, 4.5]])
    np.testing.assert_array_equal(out[1:5], TABLE[1:5])


def test_no_touched_rows_leave_the_table_unchanged():
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2), np.float32))
    np.testing.assert_array_equal(touched_row_mean(TABLE, [empty, empty]), TABLE)


def deltas(rows, counts, change):
    """A float16-delta answer for TABLE: the same rows and counts, the change instead of the values."""
    out = {k: v for k, v in touched(rows, counts, np.zeros((len(rows), 2))).items() if not k.endswith("values")}
    return {**out, "shared_embedding.item_id.deltas": change}


@pytest.mark.parametrize("upload, message", [
    (touched([1, 9], [1, 1], [[0, 0], [0, 0]]), "rows outside [0, 6)"),
    (touched([-1], [1], [[0, 0]]), "rows outside [0, 6)"),
    (touched([1, 1], [1, 1], [[0, 0], [0, 0]]), "a row is listed twice"),
    (touched([1, 2], np.array([1, -3]), [[0, 0], [0, 0]]), "counts: expected unsigned integers (2,), got int64"),
    (touched([1, 2], [1, 0], [[0, 0], [0, 0]]), "counts must be >= 1"),
    (touched([1], [1], [[np.nan, 0]]), "contains NaN or Inf"),
    ({**touched([1], [1], [[0, 0]]), "shared_embedding.item_id.values": np.zeros((1, 3), np.float32)},
     "shared_embedding.item_id.values: expected float32 (1, 2)"),
    ({**touched([1], [1], [[0, 0]]), "shared_embedding.item_id.values": np.zeros((1, 2), np.float64)},
     "shared_embedding.item_id.values: expected float32 (1, 2)"),
    ({**touched([1], [1], [[0, 0]]), "shared_embedding.item_id.rows": np.array([1], np.int64)},
     "shared_embedding.item_id.rows: expected uint8 [r], got int64"),
    ({**touched([1], [1], [[0, 0]]), "shared_embedding.item_id.rows": np.array([1], np.uint16)},
     "shared_embedding.item_id.rows: expected uint8 [r], got uint16"),
    ({**touched([1], [1], [[0, 0]]), "shared_embedding.item_id.counts": np.array([1, 1], np.uint16)},
     "shared_embedding.item_id.counts: expected unsigned integers (1,), got uint16 (2,)"),
    ({**touched([1], [1], [[0, 0]]), "shared_embedding.item_id.counts": np.array([1.0], np.float32)},
     "shared_embedding.item_id.counts: expected unsigned integers (1,), got float32"),
    ({k: v for k, v in touched([1], [1], [[0, 0]]).items() if not k.endswith("counts")},
     "missing tensor shared_embedding.item_id.counts"),
    ({**touched([1], [1], [[0, 0]]), "shared_embedding.item_id.deltas": np.zeros((1, 2), np.float16)},
     "shared_embedding.item_id.values: expected it or shared_embedding.item_id.deltas, got both"),
    ({k: v for k, v in touched([1], [1], [[0, 0]]).items() if not k.endswith("values")},
     "shared_embedding.item_id.values: expected it or shared_embedding.item_id.deltas, got neither"),
    (deltas([1], [1], np.zeros((1, 2), np.float32)), "shared_embedding.item_id.deltas: expected float16 (1, 2)"),
    (deltas([1], [1], np.full((1, 2), np.inf, np.float16)), "shared_embedding.item_id.deltas: contains NaN or Inf"),
])
def test_bad_touched_uploads_are_one_clear_line(upload, message):
    problems = touched_problems(NAME, upload, TABLE)
    assert len(problems) == 1 and message in problems[0], problems
    # through the reply check the Strategy runs: the same line, and the table's own name is not expected back
    other = {"experts.global.0.layers.0.linear.bias": np.zeros(3, np.float32)}
    assert upload_problems({**upload, **other}, {NAME: TABLE, **other}) == problems


def test_a_good_touched_upload_passes_and_the_whole_table_is_not_expected():
    other = {"experts.global.0.layers.0.linear.bias": np.zeros(3, np.float32)}
    assert upload_problems({**touched([2, 0], [4, 1], [[1, 1], [2, 2]]), **other}, {NAME: TABLE, **other}) == []
    assert upload_problems({NAME: TABLE, **other}, {NAME: TABLE, **other})[0].startswith(
        "missing tensor shared_embedding.item_id.")


def test_with_shared_embeddings_aggregates_tables_beside_the_rule():
    g = "experts.global.0.layers.0.linear.bias"
    state = ServerState()
    state.set_init({g: np.zeros(2, np.float32), NAME: TABLE})
    assert set(state.global_arrays) == {g, NAME}  # one copy for everybody, like G
    uploads = {"A": {g: np.array([1.0, 1.0], np.float32), **touched([1], [3], [[9, 9]])},
               "B": {g: np.array([3.0, 3.0], np.float32), **touched([1, 2], [1, 2], [[1, 1], [5, 6]])}}
    new = with_shared_embeddings(fedavg_round)(state, uploads, {"A": 1, "B": 1})
    np.testing.assert_array_equal(new.global_arrays[g], [2.0, 2.0])  # the rule saw the rest, unchanged
    expect = TABLE.copy()
    expect[1] = [7.0, 7.0]  # (3 * 9 + 1 * 1) / 4
    expect[2] = [5.0, 6.0]
    np.testing.assert_array_equal(new.global_arrays[NAME], expect)
    np.testing.assert_array_equal(state.global_arrays[NAME], TABLE)  # the old state is kept
    assert set(new.arrays_for("A")) == {g, NAME}
    np.testing.assert_array_equal(new.arrays_for("A")[NAME], new.arrays_for("B")[NAME])


def test_float16_deltas_are_added_to_the_rows_as_sent_then_averaged_with_values():
    """One node sends values, the other float16 deltas: the server reads each as it says."""
    g = "experts.global.0.layers.0.linear.bias"
    state = ServerState()
    state.global_arrays = {NAME: TABLE.copy(), g: np.zeros(2, np.float32)}
    change = np.array([[0.5, -0.25], [1.0, 2.0]], np.float16)
    uploads = {"A": {**touched([1, 3], [3, 1], [[10.0, 20.0], [1.0, 1.0]]), g: np.ones(2, np.float32)},
               "B": {**deltas([1, 4], [1, 2], change), g: np.ones(2, np.float32)}}
    assert all(upload_problems(u, {NAME: TABLE, g: np.zeros(2, np.float32)}) == [] for u in uploads.values())
    out = with_shared_embeddings(fedavg_round)(state, uploads, {"A": 1, "B": 1}).global_arrays[NAME]
    # B's row 1 = TABLE[1] + [0.5, -0.25] = [2.5, 2.75]; row 1 = (3 * [10, 20] + 1 * [2.5, 2.75]) / 4
    np.testing.assert_allclose(out[1], [(30 + 2.5) / 4, (60 + 2.75) / 4], rtol=1e-6)
    np.testing.assert_array_equal(out[3], [1.0, 1.0])
    np.testing.assert_array_equal(out[4], TABLE[4] + [1.0, 2.0])  # B alone: the row it sent plus its change
    np.testing.assert_array_equal(out[[0, 2, 5]], TABLE[[0, 2, 5]])
    rows, counts, values = absolute((np.array([4], np.uint8), np.array([2], np.uint8), change[1:]), True, TABLE)
    assert values.dtype == np.float32 and rows.tolist() == [4] and counts.tolist() == [2]


def test_rate_mean_moves_a_row_as_full_uploads_would_when_a_node_sends_late():
    """Two nodes use row 1 equally (2 uses a round) and change it by +1 (A) and +3 (B) a round.
    With full uploads the row moves by their mean, 2 a round: 8 in 4 rounds. Here both send in
    round 1; then A sends every round, while B's change waits and goes in round 4 with 3 rounds'
    change (+9) and uses (6). The mean over senders would move the row by 2, 1, 1, then
    (2 * 1 + 6 * 9) / 8 = 7: 11 in all. The rate mean moves it by 2, 0.5, 0.5 (A at rate 2
    against B's 2, known from round 1), then (2 * 1 + 2 * 9) / 4 = 5: 8, as full uploads."""
    table = np.zeros((3, 1), np.float32)
    rates: dict = {}
    for rnd in (1, 2, 3, 4):
        ups = {"A": (np.array([1]), np.array([2]), table[[1]] + 1.0)}
        if rnd == 1:
            ups["B"] = (np.array([1]), np.array([2]), table[[1]] + 3.0)
        if rnd == 4:
            ups["B"] = (np.array([1]), np.array([6]), table[[1]] + 9.0)
        table, rates = touched_row_rate_mean(table, ups, rates, rnd)
        assert table[1, 0] == pytest.approx({1: 2.0, 2: 2.5, 3: 3.0, 4: 8.0}[rnd])
    assert rates["B"].sent.tolist() == [0, 4, 0] and rates["B"].rate.tolist() == [0, 2, 0]  # 6 uses in 3 rounds
    assert rates["A"].sent.tolist() == [0, 4, 0] and rates["A"].rate.tolist() == [0, 2, 0]
    np.testing.assert_array_equal(table[[0, 2]], 0)  # rows nobody sent keep their value
    plain = np.zeros((3, 1), np.float32)
    for rnd in (1, 2, 3, 4):
        ups = [(np.array([1]), np.array([2]), plain[[1]] + 1.0)]
        ups += [(np.array([1]), np.array([2]), plain[[1]] + 3.0)] if rnd == 1 else []
        ups += [(np.array([1]), np.array([6]), plain[[1]] + 9.0)] if rnd == 4 else []
        plain = touched_row_mean(plain, ups)
    assert plain[1, 0] == pytest.approx(11.0)  # what the mean over senders would do


def test_rate_mean_with_every_node_sending_every_round_is_the_count_weighted_mean():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(6, 2)).astype(np.float32)
    ups = {"A": (np.array([1, 2]), np.array([3, 1]), rng.normal(size=(2, 2)).astype(np.float32)),
           "B": (np.array([2, 5]), np.array([2, 7]), rng.normal(size=(2, 2)).astype(np.float32))}
    rated, _ = touched_row_rate_mean(table, ups, {}, 1)
    np.testing.assert_allclose(rated, touched_row_mean(table, list(ups.values())), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="a row sent twice in round 1"):
        touched_row_rate_mean(table, ups, _, 1)


def test_capped_tables_keep_each_scenarios_row_rates_in_the_state(tmp_path):
    state = ServerState()
    state.set_init({NAME: TABLE})
    uploads = {"A": touched([1], [3], [[9, 9]]), "B": touched([1, 2], [1, 2], [[1, 1], [5, 6]])}
    new = with_shared_embeddings(fedavg_round, capped=True)(state, uploads, {"A": 1, "B": 1})
    np.testing.assert_array_equal(new.global_arrays[NAME][1], [7.0, 7.0])  # round 1: the count-weighted mean
    assert new.scenarios["B"].row_rate[NAME].tolist() == [0, 1, 2, 0, 0, 0]
    new.round = 1
    new.save(tmp_path / "s")
    back = ServerState.load(tmp_path / "s")
    np.testing.assert_array_equal(back.scenarios["A"].row_sent[NAME], [0, 1, 0, 0, 0, 0])
    # round 2: A alone, its row 1 at rate 3 against B's 1 known from round 1
    again = with_shared_embeddings(fedavg_round, capped=True)(back, {"A": touched([1], [3], [[11, 11]])}, {"A": 1})
    np.testing.assert_allclose(again.global_arrays[NAME][1], 7.0 + 3 * (11 - 7.0) / (3 + 1))
    assert not state.scenarios  # the old state is kept


def test_a_server_step_moves_touched_rows_that_multiple_of_the_way_to_the_mean():
    uploads = [(np.array([1]), np.array([3]), np.array([[9.0, 9.0]], np.float32)),
               (np.array([1, 2]), np.array([1, 2]), np.array([[1.0, 1.0], [5.0, 6.0]], np.float32))]
    mean = touched_row_mean(TABLE, uploads)
    np.testing.assert_array_equal(touched_row_mean(TABLE, uploads, 1.0), mean)  # 1: exactly the mean
    twice = touched_row_mean(TABLE, uploads, 2.0)
    np.testing.assert_allclose(twice[[1, 2]], TABLE[[1, 2]] + 2 * (mean[[1, 2]] - TABLE[[1, 2]]))
    np.testing.assert_array_equal(twice[[0, 3, 4, 5]], TABLE[[0, 3, 4, 5]])  # untouched rows stay
    rated, _ = touched_row_rate_mean(TABLE, {"A": uploads[0], "B": uploads[1]}, {}, 1, step=2.0)
    np.testing.assert_allclose(rated, twice, rtol=1e-6)


def test_the_server_step_reaches_the_rule_from_the_config():
    from pfms_server.aggregation.rules import make_rule

    strategy = {"algorithm": "fedavg", "fedbn": False, "shared_embeddings": {
        "enabled": True, "buckets": 5, "hash_seed": 0, "upload_cap": None, "server_lr": 2.0}}
    rule = make_rule(strategy, seed=0)
    assert "server step 2" in rule.description
    state = ServerState()
    state.set_init({NAME: TABLE})
    out = rule.aggregate(state, {"A": touched([1], [3], [[9, 9]])}, {"A": 1}).global_arrays[NAME]
    np.testing.assert_array_equal(out[1], TABLE[1] + 2 * (np.array([9, 9]) - TABLE[1]))
