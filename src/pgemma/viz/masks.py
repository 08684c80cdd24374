"""Figures for chapter "Attention masks": causal, prefix-LM and padding masks, drawn as grids.

A mask is drawn with queries as rows and keys as columns; a filled cell means "may attend".
Each token is labelled by its kind: ``x`` padding, ``i`` image, ``p`` prefix text, ``s`` suffix.
"""

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pgemma.masks import decoder_mask

KIND_COLORS = {"x": "#bbbbbb", "i": "#4c72b0", "p": "#55a868", "s": "#c44e52"}
KIND_NAMES = {"x": "padding", "i": "image", "p": "prefix text", "s": "suffix"}


def token_kinds(num_image_tokens: int, prefix_length: int, suffix_length: int, padding: int = 0) -> list[str]:
    """One letter per position of a left-padded PaliGemma sequence: x padding, i image, p prefix, s suffix."""
    for name, value in [
        ("num_image_tokens", num_image_tokens),
        ("prefix_length", prefix_length),
        ("suffix_length", suffix_length),
        ("padding", padding),
    ]:
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    kinds = ["x"] * padding + ["i"] * num_image_tokens + ["p"] * prefix_length + ["s"] * suffix_length
    if not kinds:
        raise ValueError("the sequence is empty: give at least one token")
    return kinds


def kinds_to_mask(kinds: list[str], prefix_lm: bool = True, sliding_window: int | None = None) -> torch.Tensor:
    """The decoder's mask for a sequence of token kinds, via ``pgemma.masks.decoder_mask``.

    Args:
        kinds: letters from ``token_kinds``.
        prefix_lm: PaliGemma's prefix-LM mask; False gives the causal mask of an ordinary LLM.
        sliding_window: W for the mask of Gemma 2's sliding-window layers; None: the whole context.
    Returns:
        bool[T, T], rows are queries and columns keys.
    """
    attention_mask = torch.tensor([[0 if kind == "x" else 1 for kind in kinds]])  # (1, T)
    token_type_ids = torch.tensor([[1 if kind == "s" else 0 for kind in kinds]])  # (1, T)
    types = token_type_ids if prefix_lm else None
    mask = decoder_mask(len(kinds), len(kinds), attention_mask, types, sliding_window=sliding_window)  # (1, 1, T, T)
    return mask[0, 0]


def mask_to_text(mask: torch.Tensor, kinds: list[str] | None = None) -> str:
    """A bool[T, S] mask as rows of ``1`` (may attend) and ``.``, with token kinds as headers."""
    if mask.ndim != 2:
        raise ValueError(f"mask_to_text takes one bool[T, S] mask, got shape {tuple(mask.shape)}")
    rows = []
    if kinds is not None:
        rows.append("  " + " ".join(kinds[-mask.shape[1] :]))
    query_kinds = kinds[-mask.shape[0] :] if kinds is not None else [" "] * mask.shape[0]
    for kind, row in zip(query_kinds, mask.tolist()):
        rows.append(kind + " " + " ".join("1" if value else "." for value in row))
    return "\n".join(rows)


def draw_mask(ax: Axes, mask: torch.Tensor, kinds: list[str], title: str, query: int | None = None) -> None:
    """Draw a bool[T, T] mask on `ax`; with `query`, outline its row and mark the keys it sees."""
    length = mask.shape[0]
    ax.imshow(mask.numpy(), cmap=ListedColormap(["white", "#333333"]), vmin=0, vmax=1)
    if query is not None:
        ax.add_patch(Rectangle((-0.5, query - 0.5), length, 1, fill=False, edgecolor="orange", linewidth=2.5))
        for key in torch.nonzero(mask[query]).flatten().tolist():
            ax.add_patch(Rectangle((key - 0.5, query - 0.5), 1, 1, color="orange", alpha=0.8))
    ax.set_xticks(range(length))
    ax.set_yticks(range(length))
    ax.set_xticklabels(kinds, fontsize=7)
    ax.set_yticklabels(kinds, fontsize=7)
    for label, kind in zip(ax.get_xticklabels() + ax.get_yticklabels(), kinds + kinds):
        label.set_color(KIND_COLORS[kind])
        label.set_fontweight("bold")
    ax.set_xticks([i - 0.5 for i in range(length + 1)], minor=True)
    ax.set_yticks([i - 0.5 for i in range(length + 1)], minor=True)
    ax.grid(which="minor", color="#dddddd", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(title, fontsize=10)


def plot_attention_masks(
    num_image_tokens: int, prefix_length: int, suffix_length: int, padding: int = 0, query: int | None = None
) -> Figure:
    """PaliGemma's prefix-LM mask next to the causal mask of an ordinary LLM, for the same tokens.

    Args:
        num_image_tokens, prefix_length, suffix_length, padding: token counts of one left-padded row.
        query: the position whose row is highlighted (clipped to the last position); None: none.
    """
    kinds = token_kinds(num_image_tokens, prefix_length, suffix_length, padding)
    if query is not None:
        query = min(max(query, 0), len(kinds) - 1)
    figure, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    for ax, prefix_lm in zip(axes, (True, False)):
        mask = kinds_to_mask(kinds, prefix_lm)
        name = "PaliGemma: prefix-LM" if prefix_lm else "causal-only LLM"
        seen = (
            ""
            if query is None
            else (f"\nquery {query} ({KIND_NAMES[kinds[query]]}) sees {int(mask[query].sum())} of {len(kinds)} keys")
        )
        draw_mask(ax, mask, kinds, name + seen, query)
    legend = [Rectangle((0, 0), 1, 1, color=KIND_COLORS[k]) for k in "xips"]
    figure.legend(legend, [KIND_NAMES[k] for k in "xips"], loc="lower center", ncol=4, fontsize=9)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    return figure
