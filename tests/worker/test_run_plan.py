"""How a batched decode step is split into runs of contiguous rows."""

from __future__ import annotations

from rbee.worker.engine import plan_runs


def test_equal_costs_make_one_run() -> None:
    assert plan_runs([3, 0, 2], [1.0] * 4) == [[0, 2, 3]]


def test_a_single_row_fast_path_splits_a_pair() -> None:
    # Measured shape: one row 6.6 ms, two rows 15.9, then slowly rising.
    costs = [6.6, 15.9, 16.6, 18.2, 19.4, 20.3, 22.2, 23.5]
    assert plan_runs([0, 1], costs) == [[0], [1]]
    assert plan_runs([1, 6], costs) == [[1], [6]]
    assert plan_runs([0, 1, 2], costs) == [[0, 1, 2]]
    assert plan_runs([0, 1, 2, 3, 4, 5, 6, 7], costs) == [[0, 1, 2, 3, 4, 5, 6, 7]]


def test_far_apart_slots_are_not_run_with_the_rows_between() -> None:
    costs = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]
    assert plan_runs([0, 1, 6, 7], costs) == [[0, 1], [6, 7]]
    assert plan_runs([0, 1, 2, 7], costs) == [[0, 1, 2], [7]]
    assert plan_runs([0, 4], costs) == [[0], [4]]
    assert plan_runs([0, 1], costs) == [[0, 1]]


def test_one_slot_is_one_run() -> None:
    assert plan_runs([5], [1.0] * 8) == [[5]]
