"""The figures of chapter "PaliGemma 2" draw the package's soft-cap and sliding-window masks."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from pgemma import masks  # noqa: E402
from pgemma.attention import soft_cap  # noqa: E402
from pgemma.viz.masks import kinds_to_mask, token_kinds  # noqa: E402
from pgemma.viz.paligemma2 import plot_sliding_window_masks, plot_softcap  # noqa: E402


def test_plot_softcap_draws_the_curve_its_slope_and_the_capped_probabilities():
    logits = torch.tensor([80.0, 40.0, 5.0, 0.0, -3.0])
    figure = plot_softcap(logits, cap=30)
    left, slope_axis, right = figure.axes[0], figure.axes[2], figure.axes[1]
    x, y = left.lines[1].get_data()
    assert torch.allclose(torch.as_tensor(y), soft_cap(torch.as_tensor(x), 30))
    _, slope = slope_axis.lines[0].get_data()
    assert torch.allclose(torch.as_tensor(slope), 1 - torch.tanh(torch.as_tensor(x) / 30) ** 2, atol=1e-6)
    after = [bar.get_height() for bar in right.patches[len(logits) :]]
    assert after == pytest.approx(soft_cap(logits, 30).softmax(-1).tolist(), abs=1e-6)
    assert after[0] < right.patches[0].get_height()  # capping takes probability from the largest logit
    with pytest.raises(ValueError, match="one distribution"):
        plot_softcap(torch.zeros(2, 3), cap=30)
    with pytest.raises(ValueError, match="positive"):
        plot_softcap(logits, cap=0)


def test_kinds_to_mask_with_a_window_is_the_decoders_sliding_mask():
    kinds = token_kinds(2, 2, 3)
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])
    expected = masks.decoder_mask(7, 7, token_type_ids=types, sliding_window=2)[0, 0]
    mask = kinds_to_mask(kinds, sliding_window=2)
    assert torch.equal(mask, expected)
    assert mask[:4, :4].all()  # the image+prefix block still sees itself both ways
    assert mask[-1].tolist() == [False] * 5 + [True, True]


def test_plot_sliding_window_masks_shows_both_masks_and_what_a_query_sees():
    figure = plot_sliding_window_masks(3, 2, 4, sliding_window=3, query=100)
    full, sliding = figure.axes[:2]
    assert "prefix-LM" in full.get_title() and "window 3" in sliding.get_title()
    assert "query 8 (suffix) sees 9 keys" in full.get_title()
    assert "query 8 (suffix) sees 3 keys" in sliding.get_title()
    drawn = sliding.images[0].get_array()
    assert torch.equal(torch.as_tensor(drawn).bool(), kinds_to_mask(token_kinds(3, 2, 4), sliding_window=3))
