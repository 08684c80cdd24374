"""Figures for chapter "Tensors, patches and tokens": an image cut into patches."""

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from PIL import Image

from pgemma.patches import center_crop_to_multiple, image_to_tensor, patchify


def plot_patch_grid(image: Image.Image, patch_size: int) -> Figure:
    """The image with the patch grid drawn over it, and the patch count in the title."""
    cropped = center_crop_to_multiple(image, patch_size)
    width, height = cropped.size
    figure, ax = plt.subplots(figsize=(5, 5 * height / width))
    ax.imshow(cropped)
    for x in range(0, width + 1, patch_size):
        ax.axvline(x - 0.5, color="white", linewidth=0.6)
    for y in range(0, height + 1, patch_size):
        ax.axhline(y - 0.5, color="white", linewidth=0.6)
    rows, cols = height // patch_size, width // patch_size
    ax.set_title(f"patch {patch_size}x{patch_size}: {rows} x {cols} = {rows * cols} patches")
    ax.axis("off")
    figure.tight_layout()
    return figure


def plot_patch_sequence(image: Image.Image, patch_size: int, count: int = 12) -> Figure:
    """The first `count` patches laid out in a row: the image as a sequence of tokens."""
    cropped = center_crop_to_multiple(image, patch_size)
    pixels = image_to_tensor(cropped).unsqueeze(0)  # (1, C, H, W)
    patches = patchify(pixels, patch_size)[0, :count]  # (count, C*p*p)
    tiles = patches.reshape(-1, 3, patch_size, patch_size).permute(0, 2, 3, 1)  # (count, p, p, C)
    figure, axes = plt.subplots(1, count, figsize=(1.0 * count, 1.3))
    for index, (ax, tile) in enumerate(zip(axes, tiles)):
        ax.imshow(tile.clamp(0, 1).numpy())
        ax.set_title(str(index), fontsize=9)
        ax.axis("off")
    figure.suptitle(f"patches 0..{count - 1}, read row by row", fontsize=10)
    figure.tight_layout()
    return figure


def plot_token_ids(tokens: list[str], ids: list[int]) -> Figure:
    """Text pieces above their integer ids: what a language model actually reads."""
    figure, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(tokens)), 1.4))
    for index, (token, token_id) in enumerate(zip(tokens, ids)):
        ax.add_patch(plt.Rectangle((index, 0), 0.95, 1, color=plt.cm.tab20(index % 20), alpha=0.5))
        ax.text(index + 0.47, 0.68, token.replace(" ", "\u2423"), ha="center", va="center", fontsize=9)
        ax.text(index + 0.47, 0.25, str(token_id), ha="center", va="center", fontsize=9, family="monospace")
    ax.set_xlim(0, len(tokens))
    ax.set_ylim(0, 1)
    ax.axis("off")
    figure.tight_layout()
    return figure
