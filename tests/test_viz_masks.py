"""The mask figures of chapter "Attention masks" draw the package's masks and highlight what a query sees."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from pgemma import masks  # noqa: E402
from pgemma.viz.masks import kinds_to_mask, mask_to_text, plot_attention_masks, token_kinds  # noqa: E402


def test_token_kinds_lays_out_a_left_padded_row():
    assert token_kinds(2, 2, 1, padding=1) == ["x", "i", "i", "p", "p", "s"]
    with pytest.raises(ValueError, match="non-negative"):
        token_kinds(-1, 2, 1)
    with pytest.raises(ValueError, match="empty"):
        token_kinds(0, 0, 0)


def test_kinds_to_mask_is_prefix_lm_and_padding_or_causal():
    kinds = token_kinds(2, 2, 2, padding=1)
    mask = kinds_to_mask(kinds)
    expected = masks.prefix_lm_mask(torch.tensor([[0, 0, 0, 0, 0, 1, 1]]))[0] & torch.tensor([False] + [True] * 6)
    assert torch.equal(mask, expected)
    assert not mask[:, 0].any()  # nobody sees the padding key
    assert mask[1, 1:5].all()  # the first image token sees the image and the prefix
    causal = kinds_to_mask(kinds, prefix_lm=False)
    assert torch.equal(causal, masks.causal_mask(7, 7) & torch.tensor([False] + [True] * 6))


def test_mask_to_text_matches_the_docstring_layout():
    text = mask_to_text(masks.prefix_lm_mask(torch.tensor([[0, 0, 1]]))[0], ["p", "p", "s"])
    assert text.splitlines() == ["  p p s", "p 1 1 .", "p 1 1 .", "s 1 1 1"]
    with pytest.raises(ValueError, match="one bool"):
        mask_to_text(torch.ones(1, 2, 2, dtype=torch.bool))


def test_plot_attention_masks_highlights_the_visible_keys():
    figure = plot_attention_masks(3, 2, 2, padding=1, query=1)
    prefix_ax, causal_ax = figure.axes
    assert "sees 5 of 8 keys" in prefix_ax.get_title()  # 3 image + 2 prefix tokens
    assert "sees 1 of 8 keys" in causal_ax.get_title()  # only itself
    # One outline for the row plus one filled cell per visible key.
    assert len(prefix_ax.patches) == 1 + 5 and len(causal_ax.patches) == 1 + 1
    clipped = plot_attention_masks(1, 1, 1, query=99)
    assert "query 2 (suffix)" in clipped.axes[0].get_title()
