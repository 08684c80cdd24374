"""Exercises of chapter 8, "RoPE: positions as rotations": expected answers, solutions, mistakes."""

import math

import torch

from pgemma.exercises.checking import CodingExercise, ExperimentExercise, ValueExercise, register
from pgemma.rope import apply_rope, rope_cos_sin, rope_frequencies, rotate_half

SCORE_CHOICES = ("the same score", "different scores")


def angle_of_pair_1_at_position_5() -> float:
    """8.1: position m = 5 times theta_1 = 10000^(-2/16) for a head of width 16."""
    return 5 * 10_000 ** (-2 / 16)


def tokens_per_turn_of_pair_16() -> int:
    """8.2: a full turn, 2 pi, at theta_16 = 10000^(-2 * 16 / 256) radians per token."""
    return round(2 * math.pi / 10_000 ** (-2 * 16 / 256))


def unrope(y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """8.3: rotate every pair back by its angle: cos(-a) = cos(a), sin(-a) = -sin(a)."""
    return y * cos[:, None] - rotate_half(y) * sin[:, None]  # (B, N, T, H)


def rotate_back(y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The package's rotation by the opposite angles: what `unrope` must agree with."""
    return apply_rope(y, cos, -sin)


def rotate_again(y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """A mistake for 8.3: rotating by the same angle once more turns by twice the angle."""
    return apply_rope(y, cos, sin)


def unseen_rotated_vectors() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Rotated queries float[B, N, T, H] with their (cos, sin), at random positions and widths."""
    generator = torch.Generator().manual_seed(808)
    inputs = []
    for batch, heads, length, head_dim in [(1, 2, 10, 16), (2, 3, 4, 64), (3, 1, 7, 8)]:
        positions = torch.randint(0, 4000, (batch, length), generator=generator)
        cos, sin = rope_cos_sin(positions, head_dim, 10_000.0, torch.float32)
        y = torch.randn(batch, heads, length, head_dim, generator=generator)
        inputs.append((apply_rope(y, cos, sin), cos, sin))
    return inputs


def score_at_offset_3(scores: list[float]) -> str:
    """8.4: whether the same query and key, 3 tokens apart, score the same wherever they sit."""
    return SCORE_CHOICES[0] if max(scores) - min(scores) < 1e-3 * max(map(abs, scores)) else SCORE_CHOICES[1]


def chapter_theta_run() -> dict:
    """The scores the chapter measured with theta = 100, the pair at m = 3, 100, 1000, 5003."""
    return {"scores": [-13.6755, -13.6755, -13.6754, -13.6762]}


register(
    ValueExercise(
        "8.1",
        expected=angle_of_pair_1_at_position_5,
        wrong=lambda: 5 * rope_frequencies(16)[2].item(),
        tolerance=1e-4,
    ),
    ValueExercise("8.2", expected=tokens_per_turn_of_pair_16, wrong=lambda: round(2 * math.pi / 10_000 ** (-16 / 256))),
    CodingExercise(
        "8.3",
        reference=rotate_back,
        inputs=unseen_rotated_vectors,
        solution_function=unrope,
        wrong_function=rotate_again,
    ),
    ExperimentExercise("8.4", outcome=score_at_offset_3, choices=SCORE_CHOICES, example_context=chapter_theta_run),
)
