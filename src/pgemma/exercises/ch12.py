"""Exercises of chapter 12, "Choosing the next token": expected answers, solutions, mistakes."""

from __future__ import annotations

import torch

from pgemma.exercises.checking import CodingExercise, ExperimentExercise, ValueExercise, register
from pgemma.generate import Sampling, filter_logits

COMPARED_WITH_GREEDY = ("more often right than greedy", "as often right as greedy", "less often right than greedy")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """12.1: the k-th largest logit of each row is the threshold; everything below it becomes -inf."""
    kth_largest = logits.topk(k, dim=-1).values[:, -1:]  # (B, 1)
    return torch.where(logits >= kth_largest, logits, float("-inf"))  # (B, V)


def top_k_filter_strict(logits: torch.Tensor, k: int) -> torch.Tensor:
    """A mistake for 12.1: `>` instead of `>=` drops the k-th token itself and keeps k - 1."""
    kth_largest = logits.topk(k, dim=-1).values[:, -1:]
    return torch.where(logits > kth_largest, logits, float("-inf"))


def package_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """`pgemma.generate.filter_logits` with top-k alone (temperature 1)."""
    return filter_logits(logits, Sampling(do_sample=True, top_k=k))


def unseen_logits() -> list[tuple[torch.Tensor, int]]:
    """Batches of logits of several vocabulary sizes, with k from 1 to the whole vocabulary."""
    generator = torch.Generator().manual_seed(1212)
    shapes_and_k = [((5, 300), 7), ((1, 50), 1), ((3, 1200), 40), ((2, 10), 10)]
    return [(2 * torch.randn(shape, generator=generator), k) for shape, k in shapes_and_k]


def how_sampled_captions_compare(sampled: dict, greedy: dict) -> str:
    """12.2: the share of exactly right captions of the sampled run against greedy's.

    With `top_k=1` only the most likely token survives the cut, so the draw has one candidate and
    sampling *is* greedy decoding, at any temperature: the same answers, one distinct caption per
    prompt. With `top_k=3` at T = 2 the three shape names stay in play at the hesitant steps and
    their probabilities are flattened, so some captions name the wrong shape: less often right. At
    `top_k=50` more of the tail is back, and the captions are right less often still, closer to the
    run without a cut.
    """
    if sampled["caption exact"] > greedy["caption exact"]:
        return COMPARED_WITH_GREEDY[0]
    if sampled["caption exact"] == greedy["caption exact"]:
        return COMPARED_WITH_GREEDY[1]
    return COMPARED_WITH_GREEDY[2]


def recorded_runs() -> dict:
    """Measurements of the shape the chapter's `measure` returns (for the test suite)."""
    greedy = {"caption exact": 0.9375, "caption distinct": 1.0}
    return {"sampled": {"caption exact": 0.8, "caption distinct": 1.5}, "greedy": greedy}


def nucleus_size_at_half_temperature(detect_step: torch.Tensor) -> int:
    """12.3: tokens that top-p 0.95 keeps once T = 0.5 has sharpened the distribution."""
    kept = filter_logits(detect_step[None], Sampling(do_sample=True, temperature=0.5, top_p=0.95))  # (1, V)
    return int(torch.isfinite(kept).sum())


def nucleus_size_at_temperature_1(detect_step: torch.Tensor) -> int:
    """A mistake for 12.3: the nucleus of the distribution before the temperature sharpens it."""
    kept = filter_logits(detect_step[None], Sampling(do_sample=True, top_p=0.95))
    return int(torch.isfinite(kept).sum())


def example_step() -> dict:
    """One position's logits over 1200 tokens, a few of them likely (for the test suite)."""
    generator = torch.Generator().manual_seed(12)
    logits = torch.randn(1200, generator=generator)
    logits[:5] += torch.tensor([9.0, 8.6, 8.1, 7.5, 6.8])  # neighbouring candidates, like <loc> bins
    return {"detect_step": logits}


register(
    CodingExercise(
        "12.1",
        reference=package_top_k,
        inputs=unseen_logits,
        solution_function=top_k_filter,
        wrong_function=top_k_filter_strict,
    ),
    ExperimentExercise(
        "12.2", outcome=how_sampled_captions_compare, choices=COMPARED_WITH_GREEDY, example_context=recorded_runs
    ),
    ValueExercise(
        "12.3",
        expected=nucleus_size_at_half_temperature,
        wrong=nucleus_size_at_temperature_1,
        example_context=example_step,
    ),
)
