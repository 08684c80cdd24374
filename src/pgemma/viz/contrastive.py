"""Figures for chapter "Contrastive learning: from CLIP's softmax to SigLIP's sigmoid"."""

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure


def _mark_diagonal(ax: plt.Axes, size: int) -> None:
    ax.set_xticks(range(size))
    ax.set_yticks(range(size))
    for i in range(size):
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5))


def plot_similarity_matrix(
    similarity: torch.Tensor, captions: list[str] | None = None, title: str = "image-text similarity"
) -> Figure:
    """A B x B heatmap: row i is image i, column j caption j; matching pairs (diagonal) outlined."""
    size = len(similarity)
    figure, ax = plt.subplots(figsize=(5.5, 4.8))
    shown = ax.imshow(similarity.detach().numpy(), cmap="Blues", vmin=-1, vmax=1)
    _mark_diagonal(ax, size)
    ax.set_xlabel("caption j")
    ax.set_ylabel("image i")
    if captions is not None:
        ax.set_xticks(range(size), captions, rotation=60, ha="right", fontsize=7)
    ax.set_title(title)
    figure.colorbar(shown, ax=ax, label="cosine similarity")
    figure.tight_layout()
    return figure


def plot_softmax_directions(logits: torch.Tensor) -> Figure:
    """The logits, their softmax along rows (over captions) and along columns (over images)."""
    panels = [
        ("logits t<x_i, y_j>", logits, "RdBu_r"),
        ("softmax over each row\n(image -> which caption?)", logits.softmax(dim=1), "Blues"),
        ("softmax over each column\n(caption -> which image?)", logits.softmax(dim=0), "Blues"),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, (title, values, cmap) in zip(axes, panels):
        limit = values.abs().max().item() if cmap == "RdBu_r" else 1.0
        ax.imshow(values.detach().numpy(), cmap=cmap, vmin=-limit if cmap == "RdBu_r" else 0, vmax=limit)
        _mark_diagonal(ax, len(values))
        for (i, j), value in zip(
            torch.cartesian_prod(torch.arange(len(values)), torch.arange(len(values))).tolist(),
            values.detach().flatten().tolist(),
        ):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("caption j")
        ax.set_ylabel("image i")
    figure.tight_layout()
    return figure


def plot_sigmoid_pairs(similarity: torch.Tensor, temperature: float, bias: float) -> Figure:
    """Each pair's probability of "match", sigmoid(t * s_ij + b), and its share of the loss.

    Left: the probabilities (diagonal outlined: the pairs that should be 1). Right: the loss of
    the positives and of the negatives, summed, so the imbalance between them is visible.
    """
    size = len(similarity)
    logits = similarity * temperature + bias  # (B, B)
    signs = 2 * torch.eye(size) - 1  # (B, B)
    pair_loss = -F.logsigmoid(signs * logits)  # (B, B)
    positives, negatives = pair_loss.diagonal().sum().item(), (pair_loss.sum() - pair_loss.diagonal().sum()).item()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.2, 1]})
    shown = left.imshow(torch.sigmoid(logits).numpy(), cmap="Blues", vmin=0, vmax=1)
    _mark_diagonal(left, size)
    left.set_title(f"sigmoid(t s + b), t = {temperature:.1f}, b = {bias:.1f}")
    left.set_xlabel("caption j")
    left.set_ylabel("image i")
    figure.colorbar(shown, ax=left, label="probability of a match")
    right.bar(
        ["B positives", f"B\u00b2 - B = {size * size - size} negatives"],
        [positives / size, negatives / size],
        color=["tab:blue", "tab:orange"],
    )
    right.set_ylabel("their part of the loss (sum / B)")
    right.set_title(f"loss = {(positives + negatives) / size:.2f}")
    figure.tight_layout()
    return figure


def plot_cost_vs_batch(batch_sizes: list[int], values: dict[str, list[float]], ylabel: str, title: str) -> Figure:
    """One line per loss (log-log axes), e.g. peak memory or time against the batch size."""
    figure, ax = plt.subplots(figsize=(6, 4))
    for name, ys in values.items():
        ax.plot(batch_sizes, ys, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    figure.tight_layout()
    return figure


def plot_retrieval(batch_sizes: list[int], accuracy: dict[str, list[list[float]]], chance: float) -> Figure:
    """Held-out image-to-caption retrieval accuracy against the training batch size, per loss.

    Args:
        accuracy: per loss, one list per batch size with the accuracy of every seed; a bar shows
            their mean and a dot each seed.
    """
    figure, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / len(accuracy)
    for k, (name, per_batch) in enumerate(accuracy.items()):
        positions = [i + (k - (len(accuracy) - 1) / 2) * width for i in range(len(batch_sizes))]
        bars = ax.bar(positions, [sum(runs) / len(runs) for runs in per_batch], width=width, label=name, alpha=0.7)
        for position, runs in zip(positions, per_batch):
            ax.scatter(
                [position] * len(runs),
                runs,
                s=12,
                color=bars.patches[0].get_facecolor(),
                edgecolor="black",
                linewidth=0.5,
                zorder=3,
            )
    ax.axhline(chance, color="gray", linestyle="--", label="chance")
    ax.set_xticks(range(len(batch_sizes)), [str(b) for b in batch_sizes])
    ax.set_xlabel("training batch size B")
    ax.set_ylabel("top-1 retrieval accuracy (bars: mean, dots: seeds)")
    ax.set_ylim(0, 1)
    ax.legend()
    figure.tight_layout()
    return figure


def plot_attention_pooling(image: torch.Tensor, weights: torch.Tensor, patch_size: int) -> Figure:
    """An image and, per head, where the pooling probe looks (weights over its patches).

    Args:
        image: float[C, I, I] in [-1, 1].
        weights: float[N, P] attention of the probe over the P patches, one row per head.
    """
    side = image.shape[-1] // patch_size
    figure, axes = plt.subplots(1, 1 + len(weights), figsize=(2.4 * (1 + len(weights)), 2.6))
    axes[0].imshow(((image.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
    axes[0].set_title("image")
    for head, (ax, row) in enumerate(zip(axes[1:], weights)):
        ax.imshow(row.view(side, side).detach().numpy(), cmap="magma")
        ax.set_title(f"probe, head {head}")
    for ax in axes:
        ax.axis("off")
    figure.tight_layout()
    return figure
