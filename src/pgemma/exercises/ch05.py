"""Exercises of chapter 5, "Multi-head attention": expected answers, solutions, mistakes."""

import torch

from pgemma.attention import attention
from pgemma.config import PaliGemmaConfig
from pgemma.exercises.checking import CodingExercise, ExperimentExercise, ValueExercise, register

SOLVED = 0.95  # a task counts as solved from this test accuracy on
TASKS_SOLVED = ("none", "one", "two", "all three")


def query_heads_per_kv_head() -> int:
    """5.1: PaliGemma's decoder, N query heads over K key/value heads."""
    text = PaliGemmaConfig.paligemma_3b_224().text_config
    return text.num_attention_heads // text.num_key_value_heads


def cache_bytes_per_token_8_kv_heads() -> int:
    """5.2: a key and a value (2) per layer (18) and key/value head (8), of 256 numbers of 2 bytes."""
    return 2 * 18 * 8 * 256 * 2


def multi_query_by_broadcasting(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """5.3: the one key/value head (axis 1 of size 1) broadcasts over the N query heads."""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5  # (B, N, T, H) @ (B, 1, H, S) -> (B, N, T, S)
    return scores.softmax(dim=-1) @ v  # (B, N, T, S) @ (B, 1, S, H) -> (B, N, T, H)


def multi_query_unscaled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A mistake for 5.3: the scores are not divided by sqrt(H)."""
    return (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v


def unseen_multi_query_inputs() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Queries (B, N, T, H) and one key/value head (B, 1, S, H), of several sizes."""
    generator = torch.Generator().manual_seed(505)
    sizes = [(2, 8, 5, 16, 7), (1, 4, 1, 32, 9), (3, 2, 6, 8, 6)]  # B, N, T, H, S
    return [
        (
            torch.randn(b, n, t, h, generator=generator),
            torch.randn(b, 1, s, h, generator=generator),
            torch.randn(b, 1, s, h, generator=generator),
        )
        for b, n, t, h, s in sizes
    ]


def tasks_solved(accuracy: torch.Tensor) -> str:
    """5.4: how many of the three lookups the retrained model solves (test accuracy >= 95%)."""
    return TASKS_SOLVED[int((accuracy >= SOLVED).sum())]


def chapter_heads_run() -> dict:
    """The test accuracies the chapter measured with 2 heads of 24 dims (previous token, two back,
    first token)."""
    return {"accuracy": torch.tensor([0.137, 0.997, 1.0])}


register(
    ValueExercise("5.1", expected=query_heads_per_kv_head, wrong=lambda: 1),
    ValueExercise("5.2", expected=cache_bytes_per_token_8_kv_heads, wrong=lambda: 18 * 8 * 256 * 2),
    CodingExercise(
        "5.3",
        reference=attention,
        inputs=unseen_multi_query_inputs,
        solution_function=multi_query_by_broadcasting,
        wrong_function=multi_query_unscaled,
    ),
    ExperimentExercise("5.4", outcome=tasks_solved, choices=TASKS_SOLVED, example_context=chapter_heads_run),
)
