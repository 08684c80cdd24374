"""Figures for chapter "Assembling PaliGemma": parts, training curves, answers, and where the answer looked.

The attention figure needs the decoder's attention weights: `answer_attention` runs the model once
with ``output_attentions=True`` (which forms them on the explicit path, even when the model uses
SDPA), and keeps the rows of the positions that write the answer and the columns of the image
tokens.
"""

from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from pgemma.config import IGNORE_INDEX
from pgemma.loc_tokens import parse_loc_tokens
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.processor import PaliGemmaProcessor
from pgemma.viz.processor import plot_boxes
from pgemma.world import WorldConfig, box_iou, example, split_seeds

PARTS = ("vision tower", "projector", "decoder layers", "embedding (= output head)")


# ---- Parameters -------------------------------------------------------------------------------


def parameter_counts(model: PaliGemmaForConditionalGeneration) -> dict[str, int]:
    """Parameters of each part of PaliGemma; the tied output head is the embedding, counted once.

    "decoder layers" includes the decoder's final RMSNorm. Works on the meta device (no memory).
    """
    decoder = model.language_model.model
    embedding = decoder.embed_tokens.weight.numel()
    counts = dict(
        zip(
            PARTS,
            (
                sum(p.numel() for p in model.vision_tower.parameters()),
                sum(p.numel() for p in model.multi_modal_projector.parameters()),
                sum(p.numel() for p in decoder.parameters()) - embedding,
                embedding,
            ),
        )
    )
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())  # parameters() skips the tied copy
    return counts


def plot_parameter_counts(counts: dict[str, dict[str, int]]) -> Figure:
    """One panel per model: parameters of each part, with its share of the total.

    Args:
        counts: {model name: parameter_counts(model)}.
    """
    figure, axes = plt.subplots(1, len(counts), figsize=(5.2 * len(counts), 2.8), squeeze=False)
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    for ax, (name, parts) in zip(axes[0], counts.items()):
        total = sum(parts.values())
        values = [parts[part] for part in PARTS]
        ax.barh(range(len(PARTS)), values, color=colors)
        for row, value in enumerate(values):
            ax.text(
                max(value, total * 0.01), row, f" {_human(value)} ({100 * value / total:.1f}%)", va="center", fontsize=8
            )
        ax.set_yticks(range(len(PARTS)), PARTS)
        ax.invert_yaxis()
        ax.set_xlim(0, max(values) * 1.5)  # room for the labels
        ax.set_xticks([])
        ax.set_title(f"{name}: {_human(total)} parameters", fontsize=10)
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
    figure.tight_layout()
    return figure


def _human(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return str(count)


# ---- Training ---------------------------------------------------------------------------------


def plot_loss_curve(losses: list[float], vocab_size: int, window: int = 20) -> Figure:
    """Training loss per step, its running mean, and ln V: the loss of a uniform guess."""
    figure, ax = plt.subplots(figsize=(7, 3.2))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="#4c72b0", alpha=0.35, linewidth=0.8, label="loss of each step")
    window = max(1, min(window, len(losses)))
    running = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax.plot(steps[window - 1 :], running, color="#4c72b0", label=f"mean of the last {window} steps")
    ax.axhline(np.log(vocab_size), color="grey", linestyle=":", label=f"ln V = ln {vocab_size}: a uniform guess")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy on the answer (nats)")
    ax.set_ylim(0, None)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_training_curves(record: dict, stage: str, metrics: dict[str, str], highlight: str | None = None) -> Figure:
    """Held-out metrics against training steps for every run of a recipe search, one panel per metric.

    Args:
        record: {"runs": [{"name": ..., "stage0": [{"step": ..., metric: ...}, ...], ...}]}, as
            `pgemma.train.search` writes it (a run without that stage has no entry for it).
        stage: "stage0" or "stage1".
        metrics: {key in the curve: panel title}.
        highlight: the name of the run to draw thick.
    """
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.0), squeeze=False)
    for run, color in zip(record["runs"], plt.get_cmap("tab10").colors):
        curve = run.get(stage) or []
        if not curve:
            continue
        steps = [point["step"] for point in curve]
        for ax, key in zip(axes[0], metrics):
            values = [point.get(key, np.nan) for point in curve]
            ax.plot(
                steps,
                values,
                "o-",
                color=color,
                markersize=3,
                linewidth=2.5 if run["name"] == highlight else 1.2,
                label=run["name"],
            )
    for ax, title in zip(axes[0], metrics.values()):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    figure.tight_layout()
    return figure


# ---- Answers on scenes --------------------------------------------------------------------------


def heldout_seed(index: int) -> int:
    """The `index`-th seed of the held-out split (scenes no training step ever drew)."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return next(split_seeds("heldout", start=index))


def plot_answers(
    images: list[Image.Image], prompts: list[str], answers: list[str], truths: list[str], columns: int = 4
) -> Figure:
    """A grid of scenes titled prompt -> answer (green if it equals the truth, red otherwise).

    Detection answers are drawn as boxes: the model's dashed, the true ones solid.
    """
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.7 * columns, 3.0 * rows), squeeze=False)
    for ax, image, prompt, answer, truth in zip(axes.flat, images, prompts, answers, truths):
        plot_boxes(image, parse_loc_tokens(truth, image.size[::-1]), parse_loc_tokens(answer, image.size[::-1]), ax=ax)
        shown, good = describe_answer(answer, truth, image.size[0])
        ax.set_title(f"{prompt}\n-> {_wrap(shown)}", fontsize=7.5, color="#2a7d2a" if good else "#b22222")
    for ax in axes.flat[len(images) :]:
        ax.axis("off")
    figure.tight_layout()
    return figure


def describe_answer(answer: str, truth: str, image_size: int) -> tuple[str, bool]:
    """A short text for a figure title, and whether the answer counts as right.

    Text answers are right when they equal the truth. Detection answers are shown as their labels
    with the IoU of each box against the true box of that label, and are right when every true
    object is found with IoU >= 0.5 (the usual detection threshold).
    """
    true_boxes = parse_loc_tokens(truth, image_size)
    if not true_boxes:
        return (answer if answer == truth else f"{answer} (expected: {truth})"), answer == truth
    found = {label: box for box, label in parse_loc_tokens(answer, image_size)}
    ious = {label: box_iou(found[label], box) if label in found else 0.0 for box, label in true_boxes}
    text = " ; ".join(f"{label} box, IoU {iou:.2f}" for label, iou in ious.items())
    return text, min(ious.values()) >= 0.5


def _wrap(text: str, width: int = 30) -> str:
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + len(word) >= width:
            lines.append(line)
            line = ""
        line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


# ---- Where the answer looked -------------------------------------------------------------------


class AnswerAttention(NamedTuple):
    tokens: list[str]  # the token each answer position writes (the answer's tokens, then <eos>)
    patches: torch.Tensor  # float[L, A, P]: attention to each image patch, mean over heads
    image_share: torch.Tensor  # float[L, A]: attention on all image tokens together (<= 1)


@torch.no_grad()
def answer_attention(
    model: PaliGemmaForConditionalGeneration,
    processor: PaliGemmaProcessor,
    image: Image.Image,
    prompt: str,
    answer: str,
) -> AnswerAttention:
    """How much each position that writes `answer` attends to each image patch, in every layer.

    The prompt and the answer go through the model as one training-style sequence (the answer
    as the suffix, attended causally, as during generation), so the positions and attention are
    those of the greedy decoding that wrote the answer.
    """
    batch = processor(image, prompt, answer)
    ids = batch.input_ids  # (1, T)
    output = model(ids, batch.pixel_values, batch.attention_mask, batch.token_type_ids, output_attentions=True)
    writers = torch.nonzero(batch.labels[0, 1:] != IGNORE_INDEX)[:, 0]  # (A,): position t writes token t + 1
    is_image = ids[0] == model.config.image_token_index  # (S,)
    layers = torch.stack(output.attentions.decoder)  # (L, 1, N, T, S)
    weights = layers[:, 0].mean(1)[:, writers].float()  # (L, A, S): mean over heads, the writers' rows
    tokenizer = processor.tokenizer
    tokens = [tokenizer.decode([i]) if i != tokenizer.eos_id else "<eos>" for i in ids[0, writers + 1].tolist()]
    patches = weights[..., is_image]  # (L, A, P)
    return AnswerAttention(tokens, patches, patches.sum(-1))


def plot_answer_attention(
    image: Image.Image, attention: AnswerAttention, layer: int | None = None, title: str = ""
) -> Figure:
    """The scene, then one overlay per answer token: its attention on the image patches.

    Args:
        layer: a decoder layer, or None for the mean over layers.
    Each overlay is scaled to its own maximum (the most attended patch is unshaded); its title
    gives the share of the token's attention that goes to the image at all (the rest goes to the
    prompt and the answer so far).
    """
    patches = attention.patches.mean(0) if layer is None else attention.patches[layer]  # (A, P)
    share = attention.image_share.mean(0) if layer is None else attention.image_share[layer]  # (A,)
    side = int(round(patches.shape[-1] ** 0.5))
    count = len(attention.tokens)
    columns = min(count, 6)
    rows = -(-count // columns)
    figure = plt.figure(figsize=(2.3 * (columns + 1.6), 2.3 * rows + 0.5))
    grid = figure.add_gridspec(rows, columns + 2, width_ratios=[1.6, 0.1] + [1] * columns)
    scene = figure.add_subplot(grid[:, 0])
    scene.imshow(image)
    scene.set_title(title, fontsize=8)
    scene.axis("off")
    width, height = image.size
    for index, (token, grid_map, fraction) in enumerate(zip(attention.tokens, patches, share)):
        ax = figure.add_subplot(grid[index // columns, 2 + index % columns])
        ax.imshow(image, extent=(0, width, height, 0))
        # A spotlight: patches the token attends to stay bright, the others are shaded dark.
        light = (grid_map / grid_map.max().clamp(min=1e-12)).reshape(side, side).numpy()  # (√P, √P) in [0, 1]
        shade = np.zeros((side, side, 4))
        shade[..., 3] = 0.85 * (1 - light)
        ax.imshow(shade, extent=(0, width, height, 0), interpolation="nearest")
        ax.set_title(f"{token.strip() or repr(token)!s}\n{100 * float(fraction):.0f}% on image", fontsize=8)
        ax.axis("off")
    which = "mean over layers" if layer is None else f"layer {layer}"
    figure.suptitle(f"attention of each answer token to the image patches ({which}, mean over heads)", fontsize=9)
    figure.tight_layout()
    return figure


def plot_scene_answer(
    model: PaliGemmaForConditionalGeneration,
    processor: PaliGemmaProcessor,
    index: int,
    task: str,
    world: WorldConfig,
    layer: int | None = None,
) -> Figure:
    """Held-out scene `index`: the model's greedy answer to `task` and where each answer token looked."""
    from pgemma.generate import generate  # the figure, not the module, needs generation

    item = example(heldout_seed(index), world, task=task)
    answer = generate(model, processor, item.image, item.prefix)[0]
    shown, _ = describe_answer(answer, item.suffix, item.scene.size)
    title = f"held-out scene {index}\n{item.prefix}\n-> {_wrap(shown, 24)}"
    return plot_answer_attention(
        item.image, answer_attention(model, processor, item.image, item.prefix, answer), layer, title
    )
