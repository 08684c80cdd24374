"""Figures for chapter "Choosing the next token": the next-token distribution and what each setting keeps.

The model gives one distribution over the vocabulary per step; `pgemma.generate.filter_logits`
rescales it by the temperature and cuts it to the top-k and the top-p nucleus. These figures
draw the distribution before and after, how its entropy moves with the temperature, and the
accuracy and variety of sampled answers measured in the chapter.
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from PIL import Image

from pgemma.config import IGNORE_INDEX
from pgemma.generate import Sampling, filter_logits
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.processor import PaliGemmaProcessor
from pgemma.tokenizer import PaliGemmaTokenizer

KEPT_COLOR, DROPPED_COLOR = "#4c72b0", "#c8c8c8"


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats over the last axis, -sum p log p, with 0 log 0 = 0.

    Args:
        probs: float[..., V], each row summing to 1.
    Returns:
        float[...]: 0 for a certain token, ln V for the uniform distribution.
    """
    return -torch.special.xlogy(probs, probs).sum(-1)


def token_names(tokenizer: PaliGemmaTokenizer) -> list[str]:
    """The text of every token id, control tokens included ('<eos>', '<loc0112>', ' circle')."""
    return [tokenizer.decode([token], skip_special_tokens=False) for token in range(tokenizer.vocab_size)]


class AnswerLogits(NamedTuple):
    tokens: list[str]  # the token each answer position writes (the answer's tokens, then <eos>)
    ids: torch.Tensor  # int64[A]: their ids
    logits: torch.Tensor  # float[A, V]: the next-token logits at each of those positions


@torch.no_grad()
def answer_logits(
    model: PaliGemmaForConditionalGeneration,
    processor: PaliGemmaProcessor,
    image: Image.Image,
    prompt: str,
    answer: str,
) -> AnswerLogits:
    """The distribution the model chooses from at each step of writing `answer`, in one forward pass.

    The prompt and the answer go through the model together, the answer as the suffix (attended
    causally, as during generation), so row `a` of the logits is what the model predicts after the
    first `a` answer tokens: the distribution a decoding rule picks the next token from. Only the
    tokenizer's ids are kept (the embedding may have padding rows that no text maps to).
    """
    batch = processor(image, prompt, answer)
    ids = batch.input_ids  # (1, T)
    output = model(ids, batch.pixel_values, batch.attention_mask, batch.token_type_ids)
    writers = torch.nonzero(batch.labels[0, 1:] != IGNORE_INDEX)[:, 0]  # (A,): position t writes token t + 1
    tokenizer = processor.tokenizer
    written = ids[0, writers + 1]  # (A,)
    tokens = [tokenizer.decode([i], skip_special_tokens=False) for i in written.tolist()]
    return AnswerLogits(tokens, written, output.logits[0, writers, : tokenizer.vocab_size].float())  # (A, V)


def _label(name: str) -> str:
    """A token's text as a bar label: quoted when spaces are part of it (' circle', ' ')."""
    return repr(name) if name != name.strip() or not name else name


def plot_next_token(
    logits: torch.Tensor,
    names: Sequence[str],
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    shown: int = 10,
    title: str = "",
) -> Figure:
    """The next-token distribution at `temperature`, the tokens top-k and top-p keep, and what is drawn from.

    Left: softmax(logits / temperature) for the `shown` most likely tokens and one bar for all the
    others; kept tokens are coloured, dropped ones grey, and the line is the cumulative mass that
    top-p compares with p. Right: the distribution after `filter_logits`, the one sampling draws from.

    Args:
        logits: float[V], one position's next-token logits.
        names: the V token texts (see `token_names`).
        temperature, top_k, top_p: as in `pgemma.generate.Sampling` (None: no cut).
        shown: how many tokens get their own bar.
    """
    if logits.ndim != 1 or len(names) != logits.shape[0]:
        raise ValueError(f"need float[V] logits and V names, got logits {tuple(logits.shape)} and {len(names)} names")
    sampling = Sampling(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    scaled = logits.float() / temperature  # (V,)
    before = scaled.softmax(-1)  # (V,)
    filtered = filter_logits(logits[None], sampling)[0]  # (V,): -inf where dropped
    after = filtered.softmax(-1)  # (V,)
    kept = torch.isfinite(filtered)  # (V,)
    vocab = logits.shape[0]
    shown = min(shown, vocab)
    order = scaled.argsort(descending=True)  # most likely first
    top, rest = order[:shown], order[shown:]
    labels = [_label(names[i]) for i in top.tolist()]
    heights_before = before[top].tolist()
    heights_after = after[top].tolist()
    colors = [KEPT_COLOR if kept[i] else DROPPED_COLOR for i in top.tolist()]
    if len(rest):
        rest_kept = int(kept[rest].sum())
        labels.append(f"other {len(rest)}\n({rest_kept} kept)")
        heights_before.append(before[rest].sum().item())
        heights_after.append(after[rest].sum().item())
        colors.append(KEPT_COLOR if rest_kept else DROPPED_COLOR)

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    positions = range(len(labels))
    left.bar(positions, heights_before, color=colors)
    # Top-p reads the distribution after top-k (renormalized over the top k), most likely first.
    after_top_k = filter_logits(logits[None], Sampling(do_sample=True, temperature=temperature, top_k=top_k))[0]
    cumulative = after_top_k.softmax(-1)[top].cumsum(0).tolist()
    left.plot(range(len(top)), cumulative, "k.-", linewidth=0.8, markersize=4, label="cumulative mass top-p reads")
    if top_p is not None:
        left.axhline(top_p, color="tab:red", linestyle="--", linewidth=1, label=f"p = {top_p:g}")
    left.legend(fontsize=8, loc="center right")
    left.set_title(f"softmax(logits / T), T = {temperature:g}: entropy {entropy(before).item():.2f} nats", fontsize=9)
    left.set_ylabel("probability")
    right.bar(positions, heights_after, color=colors)
    for x, height in zip(positions, heights_after):
        if height > 0.005:
            right.text(x, height, f"{height:.2f}", ha="center", va="bottom", fontsize=7)
    cuts = [f"{name} {value:g}" for name, value in (("top-k", top_k), ("top-p", top_p)) if value is not None]
    right.set_title(
        f"what is drawn from ({', '.join(cuts) or 'no cut'}): {int(kept.sum())} of {vocab} tokens kept, "
        f"entropy {entropy(after).item():.2f}",
        fontsize=9,
    )
    for ax in (left, right):
        ax.set_xticks(list(positions), labels, rotation=60, ha="right", fontsize=8)
        ax.set_ylim(0, 1.08)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_entropy_vs_temperature(logits: dict[str, torch.Tensor], temperatures: Sequence[float]) -> Figure:
    """Entropy of softmax(logits / T) against T, one line per position, with its limits 0 and ln V.

    Args:
        logits: {name: float[V] logits of one position}.
        temperatures: the T values, all > 0.
    """
    if min(temperatures) <= 0:
        raise ValueError(f"temperatures must be > 0, got {min(temperatures)}")
    figure, ax = plt.subplots(figsize=(7, 3.4))
    for name, row in logits.items():
        values = [entropy((row.float() / t).softmax(-1)).item() for t in temperatures]
        ax.plot(temperatures, values, "o-", markersize=3, label=name)
    vocab = next(iter(logits.values())).shape[-1]
    ax.axhline(math.log(vocab), color="grey", linestyle=":", label=f"ln V = ln {vocab}: uniform (T → ∞)")
    ax.axvline(1.0, color="#999999", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xticks(list(temperatures), [f"{t:g}" for t in temperatures], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("temperature T (log scale; T = 1 is the model's own distribution)")
    ax.set_ylabel("entropy (nats)")
    ax.set_ylim(0, None)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_decoding_tradeoff(
    temperatures: Sequence[float],
    quality: dict[str, dict[str, Sequence[float]]],
    diversity: dict[str, dict[str, Sequence[float]]],
) -> Figure:
    """How right and how varied sampled answers are, against the temperature.

    Args:
        temperatures: the x values; 0 stands for greedy decoding.
        quality: {series, e.g. "no top-p": {metric, e.g. "caption exact": one value per temperature}}.
        diversity: the same for the distinct answers per prompt.
    A metric has one colour, a series one line style (the first solid, the next dashed).
    """
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    styles = ("-", "--", ":", "-.")
    for ax, measured, ylabel in (
        (axes[0], quality, "exact match (detection: mean IoU)"),
        (axes[1], diversity, "distinct answers per prompt"),
    ):
        colors = {}
        for style, (series, metrics) in zip(styles, measured.items()):
            for metric, values in metrics.items():
                if len(values) != len(temperatures):
                    raise ValueError(f"{series} / {metric}: {len(values)} values for {len(temperatures)} temperatures")
                color = colors.setdefault(metric, plt.get_cmap("tab10").colors[len(colors)])
                ax.plot(temperatures, values, "o" + style, color=color, markersize=4, label=f"{metric}, {series}")
        ax.set_xticks(list(temperatures), ["greedy" if t == 0 else f"{t:g}" for t in temperatures])
        ax.set_xlabel("temperature")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylim(0, 1.05)
    axes[1].set_ylim(0.9, None)
    figure.tight_layout()
    return figure
