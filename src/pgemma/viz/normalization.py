"""Figures for chapter "Normalization": which axis each norm averages over, and what it does.

The norms themselves come from torch (BatchNorm, LayerNorm) and from ``pgemma.norms`` (Gemma's
RMSNorm); this module only feeds them a batch and draws the statistics before and after.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from pgemma.norms import rms_norm

NORMS = ("none", "BatchNorm", "LayerNorm", "RMSNorm")
NORM_COLORS = {"none": "tab:gray", "BatchNorm": "tab:blue", "LayerNorm": "tab:orange", "RMSNorm": "tab:green"}


def example_features(
    batch_size: int, shift: float = 0.0, scale: float = 1.0, num_features: int = 12, seed: int = 0
) -> torch.Tensor:
    """A batch whose features have their own means and spreads, then a global shift and scale.

    Feature j has mean ``j - D/2`` and standard deviation ``0.5 + j / 4`` (before ``scale`` and
    ``shift``), so the per-feature and per-item statistics are visibly different.

    Returns:
        float32[B, D] with D = ``num_features``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    index = torch.arange(num_features, dtype=torch.float32)  # (D,)
    means, stds = index - num_features / 2, 0.5 + index / 4  # (D,)
    x = means + stds * torch.randn(batch_size, num_features, generator=generator)  # (B, D)
    return x * scale + shift


def normalize(x: torch.Tensor, norm: str, eps: float = 1e-5) -> torch.Tensor:
    """Apply one of ``NORMS`` to float[B, D] without learned parameters (BatchNorm in training mode)."""
    if norm == "none":
        return x
    if norm == "BatchNorm":
        if x.shape[0] < 2:
            raise ValueError("BatchNorm in training mode needs at least 2 items per batch, got 1")
        return F.batch_norm(x, None, None, training=True, eps=eps)  # statistics over B, per feature
    if norm == "LayerNorm":
        return F.layer_norm(x, x.shape[-1:], eps=eps)  # statistics over D, per item
    if norm == "RMSNorm":
        return rms_norm(x, torch.zeros(x.shape[-1]), eps)  # Gemma's form with weight 0: scale 1
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def plot_norm_axes() -> Figure:
    """A batch of items x features, with the cells that share one mean and variance highlighted."""
    items, features = 5, 8
    figure, axes = plt.subplots(1, 3, figsize=(10.5, 3.0))
    panels = [
        ("BatchNorm: one feature,\nacross the batch", (slice(None), 2), "tab:blue"),
        ("LayerNorm: one item,\nacross its features (mean and variance)", (1, slice(None)), "tab:orange"),
        ("RMSNorm: one item,\nacross its features (mean square only)", (1, slice(None)), "tab:green"),
    ]
    for ax, (title, cells, color) in zip(axes, panels):
        grid = np.zeros((items, features))
        grid[cells] = 1.0
        ax.imshow(grid, cmap=plt.matplotlib.colors.ListedColormap(["#f2f2f2", color]), vmin=0, vmax=1)
        ax.set_xticks(np.arange(features + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(items + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=2)
        ax.tick_params(which="both", length=0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("features  D  \u2192")
        ax.set_ylabel("\u2190  items  B")
        ax.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_norm_statistics(norm: str, batch_size: int, shift: float = 0.0, scale: float = 1.0, seed: int = 0) -> Figure:
    """Per-feature and per-item mean and variance of a batch, before and after ``norm``.

    Grey dots are the input statistics, coloured dots the normalized output's. BatchNorm flattens
    the per-feature row, LayerNorm the per-item row; RMSNorm sets each item's mean square to 1,
    so its mean survives.
    """
    x = example_features(batch_size, shift, scale, seed=seed)  # (B, D)
    y = normalize(x, norm)  # (B, D)
    color = NORM_COLORS[norm]
    figure, axes = plt.subplots(2, 2, figsize=(10, 5.6))
    rows = [("per feature (over the batch)", 0, "feature"), ("per item (over its features)", 1, "item")]
    for row, (label, dim, xlabel) in enumerate(rows):
        for col, (statistic, name) in enumerate([(torch.mean, "mean"), (_variance, "variance")]):
            ax = axes[row, col]
            before, after = statistic(x, dim), statistic(y, dim)
            positions = np.arange(len(before))
            ax.plot(positions, before.numpy(), "o", color="lightgray", label="before")
            ax.plot(positions, after.numpy(), "o", color=color, label=f"after {norm}")
            ax.set_title(f"{name} {label}", fontsize=10)
            ax.set_xlabel(xlabel)
            if name == "variance":
                ax.set_yscale("log")
                ax.axhline(1.0, color="black", linewidth=0.6, linestyle=":")
            else:
                ax.axhline(0.0, color="black", linewidth=0.6, linestyle=":")
    axes[0, 0].legend(fontsize=8)
    figure.suptitle(f"{norm}, batch of {batch_size}, inputs x {scale:g} + {shift:g}", fontsize=11)
    figure.tight_layout()
    return figure


def _variance(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Population variance (the one the norms divide by), floored so a log axis can show zeros."""
    return x.var(dim, unbiased=False).clamp_min(1e-8)
