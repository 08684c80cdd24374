"""Exercises of chapter 9, "Transformer blocks": expected answers, solutions, mistakes."""

import torch
import torch.nn.functional as F

from pgemma.config import GemmaConfig
from pgemma.exercises.checking import CodingExercise, ExperimentExercise, ValueExercise, register
from pgemma.gemma import GemmaDecoderLayer, GemmaMLP

ANSWER_CHOICES = ("the same answer", "a different answer")


def decoder_layer_parameters() -> int:
    """9.1: one Gemma-2B decoder layer, counted on the meta device (shapes only)."""
    with torch.device("meta"):
        layer = GemmaDecoderLayer(GemmaConfig())
    return sum(p.numel() for p in layer.parameters())


def decoder_layer_parameters_by_hand() -> int:
    """A mistake for 9.1: eight key/value heads, as if the layer were multi-head."""
    d, n, h, f = 2048, 8, 256, 16384
    return 4 * d * n * h + 3 * d * f + 2 * d


def sqrt_3584_in_bfloat16() -> float:
    """9.2: sqrt(3584) = 59.87, rounded to bfloat16's 8 significant bits (steps of 0.25 in [32, 64))."""
    return torch.tensor(3584**0.5, dtype=torch.bfloat16).item()


def geglu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """9.3: GELU (tanh, as Gemma was trained) of the gate, times the up projection, projected down."""
    gate = F.gelu(x @ w_gate.T, approximate="tanh")  # (..., F)
    return (gate * (x @ w_up.T)) @ w_down.T  # (..., D)


def geglu_gate_on_up(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """A mistake for 9.3: the GELU on the up projection instead of the gate."""
    return ((x @ w_gate.T) * F.gelu(x @ w_up.T, approximate="tanh")) @ w_down.T


def package_mlp(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """`pgemma.gemma.GemmaMLP` holding the given weights: what `geglu` must agree with."""
    hidden, width = w_gate.shape
    mlp = GemmaMLP(GemmaConfig(hidden_size=width, intermediate_size=hidden))
    mlp.load_state_dict({"gate_proj.weight": w_gate, "up_proj.weight": w_up, "down_proj.weight": w_down})
    with torch.no_grad():
        return mlp(x)


def unseen_mlp_inputs() -> list[tuple[torch.Tensor, ...]]:
    """Inputs (..., D) and weights in `nn.Linear`'s layout: gate and up (F, D), down (D, F)."""
    generator = torch.Generator().manual_seed(909)
    inputs = []
    for shape, width, hidden in [((3, 5), 24, 40), ((2,), 8, 16), ((1, 2, 3), 16, 64)]:
        x = torch.randn(*shape, width, generator=generator)
        w_gate, w_up = (torch.randn(2, hidden, width, generator=generator) / width**0.5).unbind(0)
        w_down = torch.randn(width, hidden, generator=generator) / hidden**0.5
        inputs.append((x, w_gate, w_up, w_down))
    return inputs


def answer_without_the_scale(changed_answer: str, trained_answer: str) -> str:
    """9.4: whether the decoder, given its input at another scale, still predicts the scene's answer."""
    return ANSWER_CHOICES[0] if changed_answer == trained_answer else ANSWER_CHOICES[1]


def chapter_scale_run() -> dict:
    """The answers the chapter measured: the trained input, and the input divided by sqrt(D)."""
    return {"changed_answer": "a red circle<loc0320>", "trained_answer": "a blue square"}


register(
    ValueExercise("9.1", expected=decoder_layer_parameters, wrong=decoder_layer_parameters_by_hand),
    ValueExercise("9.2", expected=sqrt_3584_in_bfloat16, wrong=lambda: 3584**0.5),
    CodingExercise(
        "9.3",
        reference=package_mlp,
        inputs=unseen_mlp_inputs,
        solution_function=geglu,
        wrong_function=geglu_gate_on_up,
    ),
    ExperimentExercise(
        "9.4", outcome=answer_without_the_scale, choices=ANSWER_CHOICES, example_context=chapter_scale_run
    ),
)
