"""Sampling: greedy, the masks, the penalty and seeded reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from rbee.wire.worker import SamplingParams
from rbee.worker.sampling import (
    apply_repetition_penalty,
    sample,
    softmax,
    top_k_mask,
    top_p_mask,
    uniform,
)


def logits(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_greedy_is_argmax_whatever_the_generator() -> None:
    x = logits(0.1, 3.0, -1.0, 2.9)
    params = SamplingParams(temperature=0.0)
    assert {sample(x, params, seed, 0) for seed in range(20)} == {1}


def test_top_k_keeps_the_k_largest() -> None:
    masked = top_k_mask(logits(1.0, 5.0, 3.0, 4.0, 2.0), 2)
    assert np.isfinite(masked).tolist() == [False, True, False, True, False]
    assert top_k_mask(logits(1.0, 2.0), 0).tolist() == [1.0, 2.0]


def test_top_p_keeps_the_nucleus_including_the_token_that_crosses_p() -> None:
    x = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    assert np.isfinite(top_p_mask(x, 0.7)).tolist() == [True, True, False, False]
    assert np.isfinite(top_p_mask(x, 0.5)).tolist() == [True, False, False, False]
    assert np.isfinite(top_p_mask(x, 0.81)).tolist() == [True, True, True, False]


def test_masked_tokens_are_never_sampled() -> None:
    x = logits(1.0, 1.1, 1.2, 5.0, 5.0)
    params = SamplingParams(temperature=1.5, top_k=2)
    picked = {sample(x, params, seed, 0) for seed in range(200)}
    assert picked == {3, 4}


def test_repetition_penalty_divides_positive_and_multiplies_negative() -> None:
    out = apply_repetition_penalty(logits(2.0, -2.0, 2.0), [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 2.0]
    assert apply_repetition_penalty(logits(2.0), [0], 1.0).tolist() == [2.0]


def test_repetition_penalty_changes_the_greedy_choice() -> None:
    x = logits(3.0, 2.0)
    assert sample(x, SamplingParams(temperature=0.0, repetition_penalty=2.0), 0, 0, [0]) == 1


def test_same_seed_same_tokens_different_seed_different_tokens() -> None:
    flat = np.zeros(1000, dtype=np.float32)
    params = SamplingParams(temperature=1.0)

    def run(seed: int) -> list[int]:
        return [sample(flat, params, seed, position) for position in range(20)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_temperature_sharpens_the_distribution() -> None:
    x = logits(1.0, 2.0)
    cold = [sample(x, SamplingParams(temperature=0.1), s, 0) for s in range(100)]
    hot = [sample(x, SamplingParams(temperature=2.0), s, 0) for s in range(100)]
    assert cold.count(1) > 95
    assert 20 < hot.count(0) < 60


def test_softmax_sums_to_one_and_is_shift_invariant() -> None:
    p = softmax(logits(1000.0, 1001.0, -np.inf))
    assert p.sum() == pytest.approx(1.0)
    assert p[2] == 0.0
    assert p.tolist() == pytest.approx(softmax(logits(0.0, 1.0, -np.inf)).tolist())


def test_a_draw_depends_only_on_the_seed_and_the_position() -> None:
    draws = [uniform(7, position) for position in range(1000)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert [uniform(7, position) for position in range(1000)] == draws
    assert len(set(draws)) == 1000
    assert [uniform(8, position) for position in range(1000)] != draws
    assert 0.45 < sum(draws) / len(draws) < 0.55


def test_sampling_resumed_at_a_position_continues_the_same_tokens() -> None:
    flat = np.zeros(1000, dtype=np.float32)
    params = SamplingParams(temperature=1.0)
    whole = [sample(flat, params, 3, position) for position in range(30)]
    assert [sample(flat, params, 3, position) for position in range(12, 30)] == whole[12:]
