"""Exercises of chapter 13, "PaliGemma 2": expected answers, solutions, mistakes."""

from __future__ import annotations

import torch

from pgemma.attention import soft_cap
from pgemma.config import Gemma2Config
from pgemma.exercises.checking import CodingExercise, ExperimentExercise, ValueExercise, register

HALF = ("above one half", "below one half")


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """13.1: tanh squashes into (-1, 1); dividing by the cap first and multiplying after keeps small
    values almost unchanged and bounds large ones by the cap."""
    return cap * torch.tanh(x / cap)


def softcap_by_clamping(x: torch.Tensor, cap: float) -> torch.Tensor:
    """A mistake for 13.1: a hard clamp, which agrees below the cap's neighbourhood only roughly and
    has no gradient past the cap."""
    return x.clamp(-cap, cap)


def unseen_values() -> list[tuple[torch.Tensor, float]]:
    """Scores and logits of several shapes and sizes, with the caps of Gemma 2 and a small one."""
    generator = torch.Generator().manual_seed(1313)
    return [
        (80 * torch.randn(4, 50, generator=generator), 30.0),
        (200 * torch.randn(2, 3, 7, 7, generator=generator), 50.0),
        (torch.randn(100, generator=generator), 3.0),
    ]


def quarter_saving_length() -> int:
    """13.2: half the layers keep W of S tokens, so the windowed cache saves (S - W) / (2 S), a
    quarter when S = 2 W."""
    return 2 * Gemma2Config.gemma2_2b().sliding_window


def window_length() -> int:
    """A mistake for 13.2: the window itself, where the saving only starts."""
    return Gemma2Config.gemma2_2b().sliding_window


def top_token_after_capping(top_probability: float) -> str:
    """13.3: whether the most likely token still holds more than half the probability.

    Capping never changes the order of the logits (tanh is increasing), so greedy decoding writes
    the same token at any cap. What changes is the gap between the large logits: at a cap of 30,
    60, 45 and 35 become 28.9, 27.2 and 24.7, and the first keeps 0.84 of the probability. At a cap
    of 10 all three are squashed to within 0.02 of 10, a near tie: the top token keeps about a
    third. At 50 or 100 the gaps stay large and the top token keeps almost everything.
    """
    return HALF[0] if top_probability > 0.5 else HALF[1]


def example_cap_10() -> dict:
    """Three large logits among 253 small ones, capped at 10 (for the test suite)."""
    logits = torch.cat([torch.tensor([60.0, 45.0, 35.0]), torch.zeros(253)])
    return {"top_probability": float(soft_cap(logits, 10.0).softmax(-1).max())}


register(
    CodingExercise(
        "13.1",
        reference=soft_cap,
        inputs=unseen_values,
        solution_function=softcap,
        wrong_function=softcap_by_clamping,
    ),
    ValueExercise("13.2", expected=quarter_saving_length, wrong=window_length),
    ExperimentExercise("13.3", outcome=top_token_after_capping, choices=HALF, example_context=example_cap_10),
)
