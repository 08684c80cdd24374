"""The multi-head attention chapter's figures draw what they claim."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from pgemma.attention import attention  # noqa: E402
from pgemma.masks import causal_mask  # noqa: E402
from pgemma.viz.attention import plot_attention_query, plot_head_maps, plot_scale_effect  # noqa: E402


def weights(heads: int = 3, length: int = 5) -> torch.Tensor:
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, heads, length, 8).unbind(0)
    _, w = attention(q, k, v, causal_mask(length, length), return_weights=True)
    return w[0]  # (N, T, S)


def test_scale_effect_has_two_panels_with_the_data():
    dims = [4, 16, 64]
    figure = plot_scale_effect(dims, [4.0, 16.0, 64.0], [1.0, 1.0, 1.0], [0.5, 0.7, 0.9], [0.3, 0.3, 0.3])
    left, right = figure.axes
    assert list(left.lines[0].get_ydata()) == [4.0, 16.0, 64.0]
    assert list(right.lines[1].get_ydata()) == [0.3, 0.3, 0.3]


def test_head_maps_one_panel_per_head_with_titles():
    figure = plot_head_maps(weights(), list("abcde"), titles=["x", "y", "z"])
    assert [ax.get_title() for ax in figure.axes] == ["x", "y", "z"]
    assert figure.axes[0].images[0].get_array().shape == (5, 5)
    with pytest.raises(ValueError, match="float\\[N, T, S\\]"):
        plot_head_maps(weights()[None], list("abcde"))


def test_attention_query_frames_the_row_and_names_its_largest_key():
    w = weights()
    figure = plot_attention_query(w, list("abcde"), head=1, query=3)
    left, right = figure.axes
    heights = [bar.get_height() for bar in right.patches]
    assert heights == pytest.approx(w[1, 3].tolist())
    assert f"looks at position {int(w[1, 3].argmax())}" in right.get_title()
    assert left.patches[0].get_y() == 2.5  # the frame sits on query row 3
    with pytest.raises(ValueError, match="head must be"):
        plot_attention_query(w, list("abcde"), head=3, query=0)
