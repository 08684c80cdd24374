"""Exercises of chapter 1, "Tensors, patches and tokens": expected answers, solutions, mistakes."""

import torch

from pgemma.exercises.checking import CodingExercise, ValueExercise, register
from pgemma.patches import num_patches, patchify


def image_tokens_at_448() -> int:
    """1.1: a 448-pixel image cut into 14-pixel patches."""
    return (448 // 14) ** 2


def numbers_per_patch_16() -> int:
    """1.2: one 16 x 16 patch of an RGB image, flattened."""
    return 3 * 16 * 16


def patchify_with_unfold(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """1.3: `patchify` with `torch.Tensor.unfold`, which cuts windows out of one axis at a time."""
    batch, channels = images.shape[:2]
    windows = images.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size)  # (B, C, R, Q, p, p)
    windows = windows.permute(0, 2, 3, 1, 4, 5)  # (B, R, Q, C, p, p): one patch per (row, column)
    return windows.reshape(batch, -1, channels * patch_size * patch_size)  # (B, P, C*p*p)


def patchify_channels_last(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """A mistake for 1.3: the right patches, flattened with the channel last instead of first."""
    batch, channels = images.shape[:2]
    windows = images.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size)  # (B, C, R, Q, p, p)
    return windows.permute(0, 2, 3, 4, 5, 1).reshape(batch, -1, channels * patch_size * patch_size)


def unseen_images() -> list[tuple[torch.Tensor, int]]:
    """Batches of several sizes and patch sizes, including non-square images."""
    generator = torch.Generator().manual_seed(101)
    shapes = [((2, 3, 28, 28), 14), ((1, 3, 32, 48), 16), ((3, 1, 12, 8), 4)]
    return [(torch.randn(shape, generator=generator), patch_size) for shape, patch_size in shapes]


register(
    ValueExercise("1.1", expected=image_tokens_at_448, wrong=lambda: num_patches(224, 14)),
    ValueExercise("1.2", expected=numbers_per_patch_16, wrong=lambda: 16 * 16),
    CodingExercise(
        "1.3",
        reference=patchify,
        inputs=unseen_images,
        solution_function=patchify_with_unfold,
        wrong_function=patchify_channels_last,
    ),
)
