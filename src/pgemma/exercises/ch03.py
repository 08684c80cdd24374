"""Exercises of chapter 3, "Normalization": expected answers, solutions, mistakes, and one experiment."""

from functools import cache

import torch
import torch.nn.functional as F

from pgemma.exercises.checking import CodingExercise, ExperimentExercise, ValueExercise, register
from pgemma.generate import generate
from pgemma.norms import GemmaRMSNorm, rms_norm
from pgemma.shipped import SHIPPED_WORLD, load_shipped_model
from pgemma.world import HELDOUT_START, example


def numbers_per_batch_norm_mean() -> int:
    """3.1: BatchNorm over the batch and the tokens averages B * T numbers into each feature's mean."""
    batch, tokens = 8, 100
    return batch * tokens


def rms_norm_of_3_4() -> torch.Tensor:
    """3.2: the mean square of (3, 4) is (9 + 16) / 2 = 12.5, so each entry is divided by sqrt(12.5)."""
    x = torch.tensor([3.0, 4.0])
    rms = (x.pow(2).mean()).sqrt()  # sqrt(12.5) = 3.536
    return (1 + torch.zeros(2)) * x / rms  # weight w = 0: the scale is 1


def unit_length_of_3_4() -> torch.Tensor:
    """A mistake for 3.2: dividing by the vector's length (5) instead of its root mean square."""
    x = torch.tensor([3.0, 4.0])
    return x / x.norm()


LAYER_NORM_EPS = 1e-5


def layer_norm_from_rms(x: torch.Tensor) -> torch.Tensor:
    """3.3: LayerNorm without learned parameters is RMSNorm (scale 1, i.e. weight 0) of the centred vector."""
    centred = x - x.mean(dim=-1, keepdim=True)  # (..., D): LayerNorm's re-centring
    return rms_norm(centred, torch.zeros(x.shape[-1]), eps=LAYER_NORM_EPS)  # (..., D): the mean square is the variance


def rms_norm_uncentred(x: torch.Tensor) -> torch.Tensor:
    """A mistake for 3.3: forgetting to subtract the mean, which RMSNorm does not remove."""
    return rms_norm(x, torch.zeros(x.shape[-1]), eps=LAYER_NORM_EPS)


def layer_norm_without_parameters(x: torch.Tensor) -> torch.Tensor:
    """PyTorch's LayerNorm over the last axis, with no gain and no bias: what 3.3 must agree with."""
    return F.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS)


def unseen_activations() -> list[tuple[torch.Tensor]]:
    """Activations with a common offset (which LayerNorm removes), of several shapes and widths."""
    generator = torch.Generator().manual_seed(303)
    shapes_and_offsets = [((4, 8), 3.0), ((2, 5, 16), -2.0), ((1, 7), 0.5), ((3, 64), 10.0)]
    return [(offset + 2 * torch.randn(shape, generator=generator),) for shape, offset in shapes_and_offsets]


def shipped_model_answers(one_plus: bool = True, num_scenes: int = 6) -> tuple[list[str], list[str], list[str]]:
    """The shipped model's answers to held-out scenes, with Gemma's ``1 +`` in every RMSNorm or without it.

    Gemma stores each RMSNorm's scale as an offset ``w`` from 1 and multiplies by ``1 + w``. With
    ``one_plus=False`` every stored weight is lowered by 1, so the norms multiply by ``1 + (w - 1) = w``:
    the checkpoint read as if its weights were the scale itself.

    Returns:
        the prompts, the model's answers, and the true answers.
    """
    model, processor = load_shipped_model()  # the small PaliGemma trained in chapter 11
    if not one_plus:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, GemmaRMSNorm):
                    module.weight -= 1.0  # the scale 1 + (w - 1) = w: the `1 +` removed
    scenes = [example(HELDOUT_START + seed, SHIPPED_WORLD) for seed in range(num_scenes)]
    prompts = [scene.prefix for scene in scenes]
    answers = generate(model, processor, [scene.image for scene in scenes], prompts)
    return prompts, answers, [scene.suffix for scene in scenes]


def does_the_answer_survive(answers: list[str]) -> str:
    """3.4: "survives" when the run's answers are those of the shipped model as trained, else "breaks".

    Without the ``1 +`` the scale is ``w`` itself. The stored offsets are small numbers around 0 (the
    model learned scales ``1 + w`` near 1), so every norm inside the decoder multiplies its output by
    a few hundredths, with either sign, instead of about 1. The layers above receive inputs they were
    never trained on, and the answers break.
    """
    return "survives" if answers == answers_as_trained() else "breaks"


@cache
def answers_as_trained() -> list[str]:
    """The answers of the shipped model as it ships (computed once: the run is deterministic)."""
    _, answers, _ = shipped_model_answers(one_plus=True)
    return answers


def answers_without_one_plus() -> dict:
    """The run of 3.4 with the setting changed (the ``1 +`` removed)."""
    _, answers, _ = shipped_model_answers(one_plus=False)
    return {"answers": answers}


register(
    ValueExercise("3.1", expected=numbers_per_batch_norm_mean, wrong=lambda: 8),
    ValueExercise("3.2", expected=rms_norm_of_3_4, wrong=unit_length_of_3_4, tolerance=1e-3),
    CodingExercise(
        "3.3",
        reference=layer_norm_without_parameters,
        inputs=unseen_activations,
        solution_function=layer_norm_from_rms,
        wrong_function=rms_norm_uncentred,
    ),
    ExperimentExercise(
        "3.4",
        outcome=does_the_answer_survive,
        choices=("survives", "breaks"),
        example_context=answers_without_one_plus,
    ),
)
