"""Figures for chapter "PaliGemma 2": soft-capping and the sliding-window mask.

The masks are drawn with ``pgemma.viz.masks.draw_mask`` (queries as rows, keys as columns).
"""

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pgemma.attention import soft_cap
from pgemma.viz.masks import KIND_COLORS, KIND_NAMES, draw_mask, kinds_to_mask, token_kinds


def plot_softcap(logits: torch.Tensor, cap: float) -> Figure:
    """Soft-capping ``cap * tanh(x / cap)``: the curve and its slope, and what it does to a softmax.

    Args:
        logits: float[V], one distribution's logits.
        cap: the soft-cap c (Gemma 2: 50 on attention scores, 30 on the output logits).
    Returns:
        A figure with two panels: left, ``soft_cap(x)`` and its derivative ``1 - tanh^2(x / c)``
        over the range of ``logits``; right, the largest probabilities before and after capping.
    """
    if logits.ndim != 1:
        raise ValueError(f"plot_softcap takes one distribution float[V], got shape {tuple(logits.shape)}")
    if cap <= 0:
        raise ValueError(f"cap must be positive, got {cap}")
    reach = max(float(logits.abs().max()), 2 * cap)
    x = torch.linspace(-reach, reach, 401, requires_grad=True)  # (X,)
    capped = soft_cap(x, cap)  # (X,)
    (slope,) = torch.autograd.grad(capped.sum(), x)  # (X,)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(x.detach().numpy(), x.detach().numpy(), color="#bbbbbb", linestyle="--", label="x (no cap)")
    left.plot(x.detach().numpy(), capped.detach().numpy(), color="#4c72b0", label=f"{cap:g} tanh(x / {cap:g})")
    left.axhline(cap, color="#4c72b0", linewidth=0.5)
    left.axhline(-cap, color="#4c72b0", linewidth=0.5)
    left.set_ylim(-1.5 * cap, 1.5 * cap)
    left.set_xlabel("logit x")
    left.set_ylabel("capped logit")
    slope_axis = left.twinx()
    slope_axis.plot(x.detach().numpy(), slope.numpy(), color="#c44e52", label="slope (autograd)")
    slope_axis.set_ylim(0, 1.05)
    slope_axis.set_ylabel("d capped / dx", color="#c44e52")
    left.legend(loc="upper left", fontsize=8)
    slope_axis.legend(loc="lower right", fontsize=8)
    left.set_title("the cap and its gradient", fontsize=10)

    count = min(8, logits.numel())
    before = logits.softmax(-1)  # (V,)
    after = soft_cap(logits, cap).softmax(-1)  # (V,)
    order = before.argsort(descending=True)[:count]  # (count,)
    positions = list(range(count))
    right.bar([p - 0.2 for p in positions], before[order].tolist(), width=0.4, color="#bbbbbb", label="before")
    right.bar(
        [p + 0.2 for p in positions], after[order].tolist(), width=0.4, color="#4c72b0", label=f"capped at {cap:g}"
    )
    right.set_xticks(positions)
    right.set_xticklabels([f"{float(logits[i]):.0f}" for i in order], fontsize=8)
    right.set_xlabel("the largest logits")
    right.set_ylabel("probability")
    right.set_ylim(0, 1)
    right.legend(fontsize=8)
    right.set_title("the softmax of the largest logits", fontsize=10)
    figure.tight_layout()
    return figure


def plot_sliding_window_masks(
    num_image_tokens: int, prefix_length: int, suffix_length: int, sliding_window: int, query: int | None = None
) -> Figure:
    """PaliGemma's prefix-LM mask next to Gemma 2's sliding-window mask, for the same tokens.

    Args:
        num_image_tokens, prefix_length, suffix_length: token counts of one row (no padding).
        sliding_window: W, the keys a query keeps in the causal part of the mask (itself included).
        query: the position whose row is highlighted (clipped to the last position); None: none.
    """
    kinds = token_kinds(num_image_tokens, prefix_length, suffix_length)
    if query is not None:
        query = min(max(query, 0), len(kinds) - 1)
    figure, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    for ax, window in zip(axes, (None, sliding_window)):
        mask = kinds_to_mask(kinds, sliding_window=window)
        name = "full layers: prefix-LM" if window is None else f"sliding layers: window {window}"
        seen = (
            "" if query is None else f"\nquery {query} ({KIND_NAMES[kinds[query]]}) sees {int(mask[query].sum())} keys"
        )
        draw_mask(ax, mask, kinds, name + seen, query)
    legend = [Rectangle((0, 0), 1, 1, color=KIND_COLORS[k]) for k in "ips"]
    figure.legend(legend, [KIND_NAMES[k] for k in "ips"], loc="lower center", ncol=3, fontsize=9)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    return figure
