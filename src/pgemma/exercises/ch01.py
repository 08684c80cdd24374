"""Exercises of chapter 1, "Tensors, patches and tokens": expected answers, solutions, mistakes."""

import torch

from pgemma.exercises.checking import CodingExercise, ExperimentExercise, ValueExercise, register
from pgemma.patches import num_patches, patchify
from pgemma.tokenizer import train_tokenizer


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


def tokens_compared(ids: list[int], experiment_ids: list[int]) -> str:
    """1.4: what the run measured: the caption in more, fewer or the same number of tokens.

    A smaller vocabulary has learned fewer merges, so words are spelled from smaller pieces and
    the caption takes more tokens (at the smallest size, 1,129 ids, one per character); a larger
    one takes fewer, down to one token per word once every word of the corpus is a piece, after
    which more ids change nothing. The vocabulary's size is traded against the sequence's length.
    """
    if len(experiment_ids) > len(ids):
        return "more"
    return "fewer" if len(experiment_ids) < len(ids) else "the same"


def vocabulary_experiment() -> dict[str, list[int]]:
    """The chapter's experiment on a smaller corpus: one caption, 1,200 ids and 1,140 ids."""
    corpus = ["a red circle left of a blue square", "a green triangle above a red circle"] * 20
    return {
        "ids": train_tokenizer(corpus, vocab_size=1200).encode(corpus[0]),
        "experiment_ids": train_tokenizer(corpus, vocab_size=1140).encode(corpus[0]),
    }


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
    ExperimentExercise(
        "1.4",
        outcome=tokens_compared,
        choices=("more", "fewer", "the same"),
        example_context=vocabulary_experiment,
    ),
)
