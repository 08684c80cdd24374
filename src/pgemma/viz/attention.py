"""Figures for chapter "Multi-head attention": the scale, per-head attention maps, one query's row."""

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure


def plot_scale_effect(
    head_dims: Sequence[int],
    variance_unscaled: Sequence[float],
    variance_scaled: Sequence[float],
    max_weight_unscaled: Sequence[float],
    max_weight_scaled: Sequence[float],
) -> Figure:
    """Left: the variance of q.k against the head dim H. Right: the mean largest softmax weight.

    Without the 1/sqrt(H) scale the variance grows like H and softmax rows become one-hot.
    """
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.loglog(head_dims, variance_unscaled, "o-", label=r"$q \cdot k$")
    left.loglog(head_dims, variance_scaled, "s-", label=r"$q \cdot k / \sqrt{H}$")
    left.loglog(head_dims, head_dims, ":", color="gray", label="H")
    left.set_xlabel("head dim H")
    left.set_ylabel("variance of the score")
    left.legend()
    right.semilogx(head_dims, max_weight_unscaled, "o-", label="unscaled")
    right.semilogx(head_dims, max_weight_scaled, "s-", label=r"scaled by $1/\sqrt{H}$")
    right.set_ylim(0, 1.05)
    right.set_xlabel("head dim H")
    right.set_ylabel("largest softmax weight (mean)")
    right.legend()
    for ax in (left, right):
        ax.set_xticks(list(head_dims), [str(h) for h in head_dims])
        ax.minorticks_off()
    figure.tight_layout()
    return figure


def _draw_map(ax: plt.Axes, weights: torch.Tensor, tokens: Sequence) -> None:
    """One (T, S) attention map, queries down, keys across, labelled by the tokens."""
    ax.imshow(weights.detach().float().numpy(), cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(tokens))
    ax.set_xticks(ticks, [str(t) for t in tokens], fontsize=8)
    ax.set_yticks(ticks, [str(t) for t in tokens], fontsize=8)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")


def plot_head_maps(weights: torch.Tensor, tokens: Sequence, titles: Sequence[str] | None = None) -> Figure:
    """The attention map of every head side by side.

    Args:
        weights: float[N, T, S] attention weights of one sequence (rows sum to 1).
        tokens: the T (= S) tokens of the sequence, used as tick labels.
        titles: one title per head; default "head n".
    """
    if weights.ndim != 3:
        raise ValueError(f"weights must be float[N, T, S] for one sequence, got shape {tuple(weights.shape)}")
    heads = weights.shape[0]
    titles = titles or [f"head {n}" for n in range(heads)]
    figure, axes = plt.subplots(1, heads, figsize=(3.2 * heads, 3.4), squeeze=False)
    for ax, head_weights, title in zip(axes[0], weights, titles):
        _draw_map(ax, head_weights, tokens)
        ax.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_attention_query(weights: torch.Tensor, tokens: Sequence, head: int, query: int) -> Figure:
    """One head's map with one query row framed (left), and that row's weights over the keys (right).

    Args:
        weights: float[N, T, S] attention weights of one sequence.
        tokens: the T (= S) tokens, used as labels.
        head: which head to show.
        query: which query position's row to read.
    """
    heads, length, _ = weights.shape
    if not 0 <= head < heads or not 0 <= query < length:
        raise ValueError(f"head must be in [0, {heads}) and query in [0, {length}), got {head} and {query}")
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"width_ratios": [1, 1.3]})
    _draw_map(left, weights[head], tokens)
    left.add_patch(plt.Rectangle((-0.5, query - 0.5), weights.shape[-1], 1, fill=False, color="red", linewidth=2))
    left.set_title(f"head {head}", fontsize=10)
    row = weights[head, query].detach().float()
    right.bar(range(len(row)), row.numpy(), color=["red" if w == row.max() else "tab:blue" for w in row])
    right.set_xticks(range(len(row)), [f"{i}\n{t}" for i, t in enumerate(tokens)], fontsize=8)
    right.set_ylim(0, 1.05)
    right.set_xlabel("key position / token")
    right.set_ylabel("attention weight")
    right.set_title(f"query {query} (token {tokens[query]}) looks at position {int(row.argmax())}", fontsize=10)
    figure.tight_layout()
    return figure
