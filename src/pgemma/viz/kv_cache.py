"""Figures for chapter "The KV-cache": decoding time with and without the cache, one decode step, and
what shifted positions do to a decode step's logits."""

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from pgemma.profiling import DecodeTiming

# Cell states of the decode-step figure, in colour-map order.
_STATES = ["not needed (masked)", "not computed", "read from the cache", "computed this step"]
_COLORS = ["#f2f2f2", "white", "#8fc98f", "#f28e2b"]


def plot_decode_timings(with_cache: DecodeTiming, without_cache: DecodeTiming, prompt_length: int) -> Figure:
    """Left: seconds per generated token against the sequence length. Right: total time so far.

    Args:
        with_cache, without_cache: from ``pgemma.profiling.time_decoding`` on the same model and prompt.
        prompt_length: tokens of the prompt (image included): step i runs at length prompt_length + i.
    """
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for timing, label, color in ((without_cache, "without cache", "tab:red"), (with_cache, "with cache", "tab:green")):
        steps = np.asarray(timing.step_seconds) * 1e3
        lengths = prompt_length + 1 + np.arange(len(steps))
        left.plot(lengths, steps, ".", color=color, alpha=0.5, markersize=3)
        window = min(9, len(steps))  # a running median shows the trend through the noise of a shared machine
        smooth = [np.median(steps[max(0, i - window // 2) : i + window // 2 + 1]) for i in range(len(steps))]
        left.plot(lengths, smooth, color=color, label=label)
        total = np.cumsum([timing.prefill_seconds, *timing.step_seconds])
        right.plot(np.arange(1, len(total) + 1), total, color=color, label=label)
    left.set_xlabel("sequence length (prompt + generated tokens)")
    left.set_ylabel("ms for the next token")
    left.set_ylim(bottom=0)
    left.legend()
    right.set_xlabel("generated tokens")
    right.set_ylabel("total seconds")
    right.set_ylim(bottom=0)
    right.legend()
    right.set_title(
        f"{len(total)} tokens: {without_cache.total_seconds / with_cache.total_seconds:.1f}x faster with the cache",
        fontsize=10,
    )
    figure.tight_layout()
    return figure


def decode_step_states(prompt_length: int, step: int, use_cache: bool) -> dict[str, np.ndarray]:
    """What one forward pass computes when the model writes generated token ``step`` (1 = the first).

    The pass runs on ``length = prompt_length + step - 1`` tokens: the prompt and the generated
    tokens so far (step 1 is the prefill, which has no cache to read). Returns int arrays of
    states, indices into ``_STATES``: "q", "k", "v" of shape (length,) and "scores" (length, length),
    with the prefix-LM mask (the prompt sees itself fully, generated tokens are causal).
    """
    if prompt_length < 1 or step < 1:
        raise ValueError(f"need prompt_length >= 1 and step >= 1, got {prompt_length} and {step}")
    length = prompt_length + step - 1
    position = np.arange(length)
    visible = position[None, :] <= np.maximum(position[:, None], prompt_length - 1)  # (T, S) prefix-LM
    fresh = np.full(length, 3)
    if use_cache and step > 1:
        q = np.where(position == length - 1, 3, 1)  # only the newest token's query
        kv = np.where(position == length - 1, 3, 2)  # one new key/value, the rest from the cache
        scores = np.where(visible, 1, 0)
        scores[-1] = np.where(visible[-1], 3, 0)
    else:
        q, kv = fresh, fresh
        scores = np.where(visible, 3, 0)
    return {"q": q, "k": kv, "v": kv, "scores": scores}


def plot_decode_step(prompt_length: int, step: int, use_cache: bool) -> Figure:
    """Which queries, keys, values and scores one decode step computes, with or without the cache."""
    states = decode_step_states(prompt_length, step, use_cache)
    length = len(states["q"])
    cmap = ListedColormap(_COLORS)
    figure, axes = plt.subplots(1, 4, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1, 1, 1, length / 2]})
    for ax, name in zip(axes, ("q", "k", "v", "scores")):
        grid = states[name][:, None] if name != "scores" else states[name]
        ax.pcolormesh(grid, cmap=cmap, vmin=0, vmax=3, edgecolors="lightgray", linewidth=0.3)
        ax.invert_yaxis()  # position 0 at the top, as in a matrix
        ax.set_xticks([])
        ticks = [0, prompt_length - 1, length - 1] if length > prompt_length else [0, length - 1]
        ax.set_yticks([t + 0.5 for t in ticks], [str(t) for t in ticks])
        ax.axhline(prompt_length, color="black", linewidth=0.8, linestyle="--")
        ax.set_title({"q": "Q", "k": "K", "v": "V", "scores": r"scores $QK^\top$"}[name])
    axes[0].set_ylabel("token position (dashed: end of prompt)")
    axes[3].set_xlabel("key position")
    computed = int((states["scores"] == 3).sum())
    figure.suptitle(
        f"writing token {step} {'with' if use_cache else 'without'} the cache, computed per head "
        f"and layer: queries {int((states['q'] == 3).sum())}, keys and values "
        f"{int((states['k'] == 3).sum())}, scores {computed}",
        fontsize=10,
    )
    figure.legend(
        handles=[Patch(facecolor=c, edgecolor="gray", label=s) for s, c in zip(_STATES, _COLORS)],
        loc="lower center",
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    return figure


def plot_position_offsets(
    offsets: Sequence[int], every_position: Sequence[float], decode_position: Sequence[float]
) -> Figure:
    """How far a decode step's logits move when positions are shifted by d, on a log scale.

    Args:
        offsets: the shifts d.
        every_position: for each d, the largest |logit difference| from full recomputation when every
            position, the prompt's and the decode step's, is shifted by d.
        decode_position: the same when only the decode step's position is shifted by d.
    Note: a difference of exactly 0 has no place on a log scale; its point is left out.
    """
    figure, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(offsets, decode_position, "o-", color="tab:red", markersize=4, label="only the decode step's position + d")
    ax.plot(offsets, every_position, "o-", color="tab:green", markersize=4, label="every position + d")
    ax.set_yscale("log")
    ax.set_xlabel("offset d added to the positions")
    ax.set_ylabel("largest |logit difference|\nfrom full recomputation")
    ax.legend()
    ax.set_title(
        f"every position shifted: at most {max(every_position):.0e}; "
        f"the decode step's alone: up to {max(decode_position):.2g}",
        fontsize=10,
    )
    figure.tight_layout()
    return figure
