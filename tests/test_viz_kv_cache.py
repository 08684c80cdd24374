"""The KV-cache chapter's figures draw what they claim."""

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from pgemma.profiling import DecodeTiming  # noqa: E402
from pgemma.viz.kv_cache import (  # noqa: E402
    decode_step_states,
    plot_decode_step,
    plot_decode_timings,
    plot_position_offsets,
)

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


def test_position_offsets_plot_both_shifts_on_a_log_scale():
    offsets = [-1, 0, 1, 2]
    every, decode = [2e-5, 1e-5, 3e-5, 2e-5], [1.3, 1e-5, 0.9, 2.5]
    figure = plot_position_offsets(offsets, every, decode)
    (ax,) = figure.axes
    assert ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax.lines}
    assert list(lines["every position + d"].get_ydata()) == every
    assert list(lines["only the decode step's position + d"].get_ydata()) == decode
    assert list(lines["every position + d"].get_xdata()) == offsets
    assert ax.get_title() == "every position shifted: at most 3e-05; the decode step's alone: up to 2.5"
