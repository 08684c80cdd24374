"""Figures for chapter "CNN vs ViT": receptive fields of a CNN and of a ViT, and ViT attention."""

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pgemma.receptive_field import cnn_receptive_field, vit_attention, vit_receptive_field
from pgemma.siglip import SiglipVisionTransformer


def plot_receptive_field_growth(
    cnn: torch.nn.Sequential, vit: SiglipVisionTransformer, image: torch.Tensor, row: int, col: int
) -> Figure:
    """Top: the CNN's receptive field of pixel (row, col) after 1, 2, ... layers. Bottom: the ViT's,
    for the patch holding that pixel, after the patch embedding and after each encoder layer."""
    cnn_layers, vit_layers = len(cnn) // 2, len(vit.encoder.layers)
    patch = _patch_of(vit, row, col)
    columns = max(cnn_layers, vit_layers + 1)
    figure, axes = plt.subplots(2, columns, figsize=(2.3 * columns, 5.0), squeeze=False)
    for layer in range(1, cnn_layers + 1):
        field = cnn_receptive_field(cnn, image, layer, row, col)
        _show_gradient(axes[0, layer - 1], field, f"CNN, {layer} layer{'s' if layer > 1 else ''}")
        axes[0, layer - 1].plot(col, row, "c+", markersize=8)
    for layer in range(vit_layers + 1):
        field = vit_receptive_field(vit, image, layer, patch)
        _show_gradient(
            axes[1, layer],
            field,
            "ViT, patch embedding" if layer == 0 else f"ViT, {layer} layer{'s' if layer > 1 else ''}",
        )
        axes[1, layer].plot(col, row, "c+", markersize=8)
    for ax in axes.flat[:]:
        if not ax.images:
            ax.axis("off")
    figure.suptitle("pixels that can change one output (bright: strong effect, grey: no effect at all)", fontsize=11)
    figure.tight_layout()
    return figure


def plot_receptive_fields(
    cnn: torch.nn.Sequential, vit: SiglipVisionTransformer, image: torch.Tensor, layer: int, row: int, col: int
) -> Figure:
    """Pixel (row, col) after ``layer`` layers: its CNN receptive field, the ViT receptive field of
    its patch, and that patch's attention weights over all patches in ViT layer ``layer``."""
    patch = _patch_of(vit, row, col)
    figure, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    axes[0].imshow(((image[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
    axes[0].plot(col, row, "c+", markersize=12, markeredgewidth=2)
    axes[0].set_title(f"image, pixel ({row}, {col}), patch {patch}", fontsize=10)
    axes[0].axis("off")
    _show_gradient(axes[1], cnn_receptive_field(cnn, image, layer, row, col), f"CNN receptive field, layer {layer}")
    _show_gradient(axes[2], vit_receptive_field(vit, image, layer, patch), f"ViT receptive field, layer {layer}")
    weights = vit_attention(vit, image, layer, patch)  # (P,)
    side = int(round(weights.numel() ** 0.5))
    shown = axes[3].imshow(weights.reshape(side, side).numpy(), cmap="viridis", vmin=0)
    patch_row, patch_col = divmod(patch, side)
    axes[3].plot(patch_col, patch_row, "r+", markersize=12, markeredgewidth=2)
    axes[3].set_title(f"ViT attention of patch {patch}, layer {layer}", fontsize=10)
    axes[3].axis("off")
    figure.colorbar(shown, ax=axes[3], fraction=0.046)
    for ax in axes[1:3]:
        ax.plot(col, row, "c+", markersize=12, markeredgewidth=2)
    figure.tight_layout()
    return figure


def _patch_of(vit: SiglipVisionTransformer, row: int, col: int) -> int:
    """Index of the patch (row-major) that holds pixel (row, col)."""
    patch_size = vit.embeddings.patch_embedding.kernel_size[0]
    image_size = int(round(vit.embeddings.position_embedding.num_embeddings**0.5)) * patch_size
    if not (0 <= row < image_size and 0 <= col < image_size):
        raise ValueError(f"pixel ({row}, {col}) is outside the {image_size}x{image_size} image")
    return (row // patch_size) * (image_size // patch_size) + col // patch_size


def _show_gradient(ax: Axes, field: torch.Tensor, title: str) -> None:
    """The gradient map on a log scale relative to its largest value; exact zeros in grey."""
    relative = (field / field.max()).clamp_min(1e-4).log10().numpy()  # 0 (strongest) .. -4
    cmap = plt.get_cmap("magma").with_extremes(bad="#cccccc")
    ax.imshow(np.ma.masked_where((field == 0).numpy(), relative), cmap=cmap, vmin=-4, vmax=0)
    covered = int((field > 0).sum())
    ax.set_title(f"{title}\n{covered} of {field.numel()} pixels", fontsize=9)
    ax.axis("off")
