"""Figures for chapter "The PaliGemma processor": image steps, token strips, boxes and labels.

The token strip is the chapter's main picture: one coloured cell per token of a prompt, with the
rows the processor returns next to the ids (attention_mask, token_type_ids, labels) printed
underneath, aligned column by column. The P ``<image>`` tokens of a row are drawn as one wide
cell, so a 256-token image run does not hide the text.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from pgemma.config import IGNORE_INDEX
from pgemma.loc_tokens import parse_loc_tokens
from pgemma.processor import PaliGemmaProcessor, ProcessorBatch
from pgemma.tokenizer import PaliGemmaTokenizer
from pgemma.world import WorldConfig, example

ROLE_COLORS = {
    "padding": "#d9d9d9",
    "image": "#4c72b0",
    "bos": "#8172b3",
    "prompt": "#55a868",
    "newline": "#a6d854",
    "suffix": "#c44e52",
    "eos": "#8c2d2d",
}
ROWS = ("attention_mask", "token_type_ids", "labels")
CHANNEL_COLORS = ("#d62728", "#2ca02c", "#1f77b4")


PHOTO_DPI = 72  # figures of photographs: about one figure pixel per image pixel

# ---- Images -----------------------------------------------------------------------------------


def plot_image_stages(image: Image.Image, processor: PaliGemmaProcessor) -> Figure:
    """The photo after each image step: original, resized, rescaled, normalized (red channel)."""
    resized = processor.resize(processor.load_image(image))
    rescaled = processor.rescale(resized)  # (I, I, C) in [0, 1]
    normalized = processor.normalize(rescaled)  # (I, I, C) in [-1, 1]
    # 72 dpi draws each 224-pixel panel at about its own size; at 100 dpi this photograph alone
    # weighed 0.6 MB on the page, for no detail the eye can see.
    figure, axes = plt.subplots(1, 4, figsize=(13, 3.8), dpi=PHOTO_DPI, gridspec_kw={"width_ratios": [1, 1, 1, 1.2]})
    width, height = image.size
    axes[0].imshow(image)
    axes[0].set_title(f"original: {width} x {height}, uint8")
    axes[1].imshow(resized)
    axes[1].set_title(f"resize (bicubic): {processor.image_size} x {processor.image_size}")
    axes[2].imshow(rescaled)
    axes[2].set_title(f"rescale x / 255: [{rescaled.min():.0f}, {rescaled.max():.0f}]")
    shown = axes[3].imshow(normalized[..., 0], cmap="RdBu_r", vmin=-1, vmax=1)
    axes[3].set_title("normalize (x - 0.5) / 0.5: red channel")
    figure.colorbar(shown, ax=axes[3], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.axis("off")
    figure.tight_layout()
    return figure


def plot_channel_planes(pixel_values: torch.Tensor) -> Figure:
    """The three planes of one channels-first image float[C, I, I], each on the [-1, 1] scale."""
    if pixel_values.ndim != 3 or pixel_values.shape[0] != 3:
        raise ValueError(f"expected one image float[3, I, I], got shape {tuple(pixel_values.shape)}")
    figure, axes = plt.subplots(1, 3, figsize=(10, 3.6), dpi=PHOTO_DPI)
    for index, (ax, name) in enumerate(zip(axes, ("red", "green", "blue"))):
        ax.imshow(pixel_values[index].numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(f"pixel_values[{index}] ({name}), mean {pixel_values[index].mean():+.2f}")
        ax.axis("off")
    figure.suptitle(f"channels first: shape {tuple(pixel_values.shape)}", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.93))  # room for the suptitle
    return figure


def plot_pixel_histograms(image: Image.Image, processor: PaliGemmaProcessor) -> Figure:
    """Per-channel histograms of the pixel values after resize, rescale and normalize."""
    resized = np.asarray(processor.resize(processor.load_image(image)), dtype=np.float32)  # (I, I, C)
    rescaled = processor.rescale(processor.resize(processor.load_image(image)))
    stages = [
        ("after resize: uint8", resized, (0, 255)),
        ("after rescale: x / 255", rescaled, (0, 1)),
        ("after normalize: (x - 0.5) / 0.5", processor.normalize(rescaled), (-1, 1)),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for ax, (title, values, (low, high)) in zip(axes, stages):
        bins = np.linspace(low, high, 52)
        for channel, (name, color) in enumerate(zip(("red", "green", "blue"), CHANNEL_COLORS)):
            ax.hist(values[..., channel].ravel(), bins=bins, color=color, alpha=0.45, label=name)
        for edge in (low, high):
            ax.axvline(edge, color="black", linewidth=0.8, linestyle="--")
        ax.set_title(f"{title}\nrange [{values.min():.2f}, {values.max():.2f}], mean {values.mean():.2f}", fontsize=10)
        ax.set_xlabel("pixel value")
    axes[0].set_ylabel("pixels")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    return figure


# ---- Tokens -----------------------------------------------------------------------------------


def token_roles(batch: ProcessorBatch, row: int, tokenizer: PaliGemmaTokenizer) -> list[str]:
    """The role of every token of one row: padding, image, bos, prompt, newline, suffix or eos."""
    roles = []
    ids, types, mask = batch.input_ids[row], batch.token_type_ids[row], batch.attention_mask[row]
    for token_id, token_type, real in zip(ids.tolist(), types.tolist(), mask.tolist()):
        if not real:
            roles.append("padding")
        elif token_id == tokenizer.image_id:
            roles.append("image")
        elif token_id == tokenizer.bos_id:
            roles.append("bos")
        elif token_type == 1:
            roles.append("eos" if token_id == tokenizer.eos_id else "suffix")
        elif tokenizer.decode([token_id]) == "\n":
            roles.append("newline")
        else:
            roles.append("prompt")
    return roles


def _token_text(token_id: int, tokenizer: PaliGemmaTokenizer) -> str:
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    return text.replace("\n", "\\n").replace(" ", "\u2423")


def _cells(roles: list[str]) -> list[tuple[int, int]]:
    """(first position, number of positions) of each drawn cell: a run of <image> is one cell."""
    cells, position = [], 0
    while position < len(roles):
        length = 1
        if roles[position] == "image":
            while position + length < len(roles) and roles[position + length] == "image":
                length += 1
        cells.append((position, length))
        position += length
    return cells


def _draw_token_strip(
    ax: Axes, batch: ProcessorBatch, tokenizer: PaliGemmaTokenizer, rows: tuple[str, ...] = ROWS
) -> None:
    """Draw every row of `batch` as a strip of token cells with `rows` of values underneath."""
    names = [name for name in rows if getattr(batch, name) is not None]
    block = 1 + len(names) + 0.6  # height of one example: tokens, value rows, a gap
    width = 0.0
    for row in range(batch.input_ids.shape[0]):
        roles = token_roles(batch, row, tokenizer)
        top, x = -row * block, 0.0
        for start, length in _cells(roles):
            wide = 2.0 if length > 1 else 1.0
            centre = x + (wide - 0.06) / 2
            role = roles[start]
            ax.add_patch(Rectangle((x, top), wide - 0.06, 0.94, color=ROLE_COLORS[role], alpha=0.75))
            text = (
                f"<image>\u00d7{length}"
                if role == "image"
                else _token_text(int(batch.input_ids[row, start]), tokenizer)
            )
            ax.text(
                centre,
                top + 0.47,
                text,
                ha="center",
                va="center",
                fontsize=7.5,
                color="white" if role in ("image", "bos", "suffix", "eos") else "black",
                rotation=0 if len(text) < 9 or role == "image" else 20,
            )
            for depth, name in enumerate(names, start=1):
                value = int(getattr(batch, name)[row, start])
                shown = str(value)
                if name == "labels" and value != IGNORE_INDEX:
                    shown = _token_text(value, tokenizer)
                faint = shown in ("0", str(IGNORE_INDEX))
                ax.text(
                    centre,
                    top - depth + 0.47,
                    shown,
                    ha="center",
                    va="center",
                    fontsize=7.5,
                    family="monospace",
                    color="#999999" if faint else "black",
                )
            x += wide
        width = max(width, x)
        for depth, name in enumerate(names, start=1):
            ax.text(-0.2, top - depth + 0.47, name, ha="right", va="center", fontsize=8, style="italic")
    ax.set_xlim(-3.2, width)
    ax.set_ylim(-batch.input_ids.shape[0] * block + 0.6, 1)
    ax.axis("off")


def _legend(ax: Axes, roles: set[str]) -> None:
    handles = [Rectangle((0, 0), 1, 1, color=color, alpha=0.75) for role, color in ROLE_COLORS.items() if role in roles]
    ax.legend(
        handles,
        [role for role in ROLE_COLORS if role in roles],
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(handles),
        fontsize=8,
        frameon=False,
    )


def plot_token_strip(
    batch: ProcessorBatch, tokenizer: PaliGemmaTokenizer, rows: tuple[str, ...] = ROWS, title: str | None = None
) -> Figure:
    """Every row of a processed batch as coloured token cells, with `rows` printed underneath.

    Args:
        batch: what `PaliGemmaProcessor.__call__` returns.
        rows: names of ProcessorBatch fields to print under the tokens, aligned per token.
    """
    count = len(_cells(token_roles(batch, 0, tokenizer)))
    names = [name for name in rows if getattr(batch, name) is not None]
    height = batch.input_ids.shape[0] * (1.6 + len(names)) * 0.42 + 0.5
    figure, ax = plt.subplots(figsize=(max(6.0, 0.62 * (count + 4)), height))
    _draw_token_strip(ax, batch, tokenizer, rows)
    _legend(ax, {role for row in range(batch.input_ids.shape[0]) for role in token_roles(batch, row, tokenizer)})
    if title:
        figure.suptitle(title, fontsize=10, y=1.0)
    figure.tight_layout()
    return figure


def plot_loss_positions(batch: ProcessorBatch, tokenizer: PaliGemmaTokenizer, gradient: torch.Tensor) -> Figure:
    """One example's tokens and labels above the size of d loss / d logits at each position.

    Args:
        batch: a one-example batch with labels.
        gradient: float[T], the norm of the loss's gradient with respect to each position's logits.
    """
    if batch.labels is None or batch.input_ids.shape[0] != 1:
        raise ValueError("plot_loss_positions takes a one-example batch with labels (pass a suffix)")
    roles = token_roles(batch, 0, tokenizer)
    cells = _cells(roles)
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(max(6.0, 0.62 * (len(cells) + 4)), 3.2), gridspec_kw={"height_ratios": [1, 1]}
    )
    _draw_token_strip(top, batch, tokenizer, rows=("labels",))
    _legend(top, set(roles))
    # Bars under the same columns as the cells above (an image run shares one wide column).
    x, centres, heights, widths = 0.0, [], [], []
    for start, length in cells:
        wide = 2.0 if length > 1 else 1.0
        centres.append(x + (wide - 0.06) / 2)
        heights.append(float(gradient[start : start + length].max()))
        widths.append(wide - 0.2)
        x += wide
    bottom.bar(centres, heights, width=widths, color="#c44e52")
    bottom.set_xlim(top.get_xlim())
    bottom.set_xticks([])
    bottom.set_ylabel("|d loss / d logits|", fontsize=8)
    for side in ("top", "right"):
        bottom.spines[side].set_visible(False)
    figure.tight_layout()
    return figure


# ---- Boxes ------------------------------------------------------------------------------------


def plot_boxes(
    image: Image.Image,
    true_boxes: list[tuple[tuple[float, ...], str]],
    decoded_boxes: list[tuple[tuple[float, ...], str]],
    ax: Axes | None = None,
) -> Figure:
    """An image with true pixel boxes (solid) and boxes read back from <loc> tokens (dashed).

    Boxes are ((y_min, x_min, y_max, x_max), label) in pixels of `image`, max exclusive.
    """
    figure = ax.figure if ax is not None else plt.subplots(figsize=(4, 4))[0]
    ax = ax or figure.axes[0]
    ax.imshow(image, extent=(0, image.size[0], image.size[1], 0), interpolation="nearest")
    for boxes, style, color in ((true_boxes, "-", "white"), (decoded_boxes, "--", "black")):
        for (y_min, x_min, y_max, x_max), label in boxes:
            ax.add_patch(
                Rectangle(
                    (x_min, y_min),
                    x_max - x_min,
                    y_max - y_min,
                    fill=False,
                    edgecolor=color,
                    linestyle=style,
                    linewidth=1.8,
                )
            )
            if style == "--":
                ax.text(
                    x_min,
                    y_min - 0.8,
                    label,
                    fontsize=8,
                    color="black",
                    bbox={"facecolor": "white", "alpha": 0.7, "pad": 1, "linewidth": 0},
                )
    ax.set_title("solid: true box, dashed: read back from <loc> tokens", fontsize=8)
    ax.axis("off")
    return figure


def plot_world_example(seed: int, task: str, processor: PaliGemmaProcessor, cfg: WorldConfig = WorldConfig()) -> Figure:
    """A synthetic scene, its task's prompt and answer as a token strip, and decoded boxes."""
    item = example(seed, cfg, task=task)
    batch = processor(item.image, item.prefix, item.suffix)
    count = len(_cells(token_roles(batch, 0, processor.tokenizer)))
    figure = plt.figure(figsize=(max(9.0, 0.62 * (count + 4) + 3.2), 3.0))
    grid = figure.add_gridspec(1, 2, width_ratios=[1, max(2.5, 0.24 * (count + 4))])
    image_ax, strip_ax = figure.add_subplot(grid[0]), figure.add_subplot(grid[1])
    decoded = parse_loc_tokens(item.suffix, item.scene.size)
    named = {label for _, label in decoded}
    true_boxes = [(shape.box, shape.kind) for shape in item.scene.shapes if shape.kind in named]
    plot_boxes(item.image, true_boxes, decoded, ax=image_ax)
    image_ax.set_title(f"seed {seed}: {item.prefix!r}", fontsize=8)
    _draw_token_strip(strip_ax, batch, processor.tokenizer)
    _legend(strip_ax, set(token_roles(batch, 0, processor.tokenizer)))
    figure.tight_layout()
    return figure
