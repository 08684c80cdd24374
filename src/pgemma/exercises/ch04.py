"""Exercises of chapter 4, "CNN vs ViT": expected answers, solutions, mistakes, and one experiment."""

from functools import cache

import torch

from pgemma.config import PaliGemmaConfig
from pgemma.exercises.checking import CodingExercise, ExperimentExercise, ValueExercise, register
from pgemma.masks import causal_mask
from pgemma.receptive_field import average_cnn_field, effective_side

CHAPTER_DEPTH = 4  # the chapter's CNN has 4 layers of 3 x 3 kernels


def receptive_field_side() -> int:
    """4.1: each stride-1 5 x 5 layer widens the window by 5 - 1 = 4 pixels, starting from one pixel."""
    layers, kernel_size = 5, 5
    return 1 + layers * (kernel_size - 1)


def patch_embedding_parameters() -> int:
    """4.2: a Conv2d from 3 channels to 1152 with a 14 x 14 kernel: one weight per (output, input, row, column),
    plus one bias per output channel."""
    vision = PaliGemmaConfig.paligemma_3b_224().vision_config
    weights = vision.hidden_size * vision.num_channels * vision.patch_size**2  # 1152 * 3 * 14 * 14
    return weights + vision.hidden_size


def square_causal_mask(length: int) -> torch.Tensor:
    """The package's causal mask for ``length`` tokens and no cache: what 4.3 must agree with."""
    return causal_mask(length, length)


def causal_mask_from_scratch(length: int) -> torch.Tensor:
    """4.3: query t may attend to keys 0..t, the lower triangle including the diagonal."""
    return torch.ones(length, length, dtype=torch.bool).tril()  # (T, T)


def causal_mask_without_diagonal(length: int) -> torch.Tensor:
    """A mistake for 4.3: a token that may not attend to itself (and the first token to nothing)."""
    return torch.ones(length, length, dtype=torch.bool).tril(diagonal=-1)


def unseen_lengths() -> list[tuple[int]]:
    return [(1,), (3,), (6,), (11,)]


def effective_share(num_layers: int, side: int, kernel_size: int = 3) -> float:
    """The side of the square holding half the gradient, as a share of the side the formula gives."""
    return side / (1 + num_layers * (kernel_size - 1))


def does_the_share_shrink(num_layers: int, side: int) -> str:
    """4.4: how the share of the theoretical square that holds half of the gradient changed with depth.

    The theoretical side grows like the number of layers L; the effective one like sqrt(L) (a sum of
    L independent small steps spreads like a random walk, Luo et al. 2016), so the share shrinks
    like 1 / sqrt(L): deeper CNNs use ever less of their receptive field.
    """
    share, chapter_share = effective_share(num_layers, side), effective_share(CHAPTER_DEPTH, chapter_side())
    if share == chapter_share:
        return "the same"
    return "smaller" if share < chapter_share else "larger"


@cache
def chapter_side() -> int:
    """The side holding half of the gradient in the chapter's 4-layer CNN (computed once)."""
    return effective_side(average_cnn_field(CHAPTER_DEPTH), CHAPTER_DEPTH, CHAPTER_DEPTH)


def sixteen_layers() -> dict:
    """The run of 4.4 with the setting changed to 16 layers."""
    field = average_cnn_field(16)  # (33, 33)
    return {"num_layers": 16, "side": effective_side(field, 16, 16)}


register(
    ValueExercise("4.1", expected=receptive_field_side, wrong=lambda: 5 * 5),
    ValueExercise("4.2", expected=patch_embedding_parameters, wrong=lambda: 1152 * 3 * 14 * 14),
    CodingExercise(
        "4.3",
        reference=square_causal_mask,
        inputs=unseen_lengths,
        solution_function=causal_mask_from_scratch,
        wrong_function=causal_mask_without_diagonal,
    ),
    ExperimentExercise(
        "4.4",
        outcome=does_the_share_shrink,
        choices=("larger", "smaller", "the same"),
        example_context=sixteen_layers,
    ),
)
