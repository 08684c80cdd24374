"""The KV-cache chapter's figures draw what they claim."""

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from pgemma.profiling import DecodeTiming  # noqa: E402
from pgemma.viz.kv_cache import decode_step_states, plot_decode_step, plot_decode_timings  # noqa: E402

COMPUTED, CACHED, NOT_COMPUTED, MASKED = 3, 2, 1, 0


def test_decode_step_with_cache_computes_one_row():
    states = decode_step_states(prompt_length=4, step=3, use_cache=True)  # 4 prompt + 2 generated tokens
    assert states["q"].tolist() == [NOT_COMPUTED] * 5 + [COMPUTED]
    assert states["k"].tolist() == [CACHED] * 5 + [COMPUTED]
    scores = states["scores"]
    assert scores.shape == (6, 6) and (scores[-1] == COMPUTED).all() and not (scores[:-1] == COMPUTED).any()
    # prefix-LM: the prompt sees the whole prompt, not the generated tokens
    assert (scores[:4, :4] == NOT_COMPUTED).all() and (scores[:4, 4:] == MASKED).all()


def test_decode_step_without_cache_recomputes_everything_visible():
    states = decode_step_states(prompt_length=4, step=3, use_cache=False)
    assert (states["q"] == COMPUTED).all() and (states["v"] == COMPUTED).all()
    visible = states["scores"] == COMPUTED
    assert visible.sum() == 4 * 4 + 5 + 6  # prompt block, then two causal rows
    assert np.array_equal(decode_step_states(4, 1, True)["scores"], decode_step_states(4, 1, False)["scores"])
    with pytest.raises(ValueError):
        decode_step_states(0, 1, True)


def test_decode_step_figure_titles_count_the_work():
    figure = plot_decode_step(prompt_length=4, step=3, use_cache=True)
    assert "queries 1, keys and values 1, scores 6" in figure._suptitle.get_text()
    assert len(figure.axes) == 4


def test_decode_timings_plot_cumulative_totals():
    fast = DecodeTiming(prefill_seconds=0.01, step_seconds=[0.001] * 9, total_seconds=0.019)
    slow = DecodeTiming(prefill_seconds=0.01, step_seconds=[0.001 * (i + 1) for i in range(9)], total_seconds=0.055)
    figure = plot_decode_timings(fast, slow, prompt_length=5)
    left, right = figure.axes
    totals = {line.get_label(): line.get_ydata() for line in right.lines}
    assert totals["with cache"][-1] == pytest.approx(0.019)
    assert totals["without cache"][-1] == pytest.approx(0.055)
    assert "2.9x faster" in right.get_title()
    assert left.lines[0].get_xdata()[0] == 6  # step 1 runs at prompt length + 1
