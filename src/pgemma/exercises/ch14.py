"""Exercises of chapter 14, "Fine-tuning PaliGemma": expected answers, solutions, mistakes."""

import dataclasses

import torch

from pgemma.config import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig
from pgemma.exercises.checking import CodingExercise, ExperimentExercise, register
from pgemma.lora import DECODER_TARGETS, add_lora, trainable_parameters
from pgemma.paligemma import PaliGemmaForConditionalGeneration

TINY_TOWER = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=32, patch_size=16)  # fmt: skip


def lora_parameters_by_wrapping(text: GemmaConfig, rank: int) -> int:
    """The reference for 14.1: wrap every projection of a decoder of this shape (built on the meta
    device: shapes, no numbers) and count what is trainable."""
    config = PaliGemmaConfig(
        vision_config=TINY_TOWER,
        text_config=text,
        projection_dim=text.hidden_size,
        image_token_index=text.vocab_size - 1,
    )
    with torch.device("meta"):
        model = PaliGemmaForConditionalGeneration(config)
        add_lora(model, DECODER_TARGETS, rank, alpha=2.0 * rank)
    return trainable_parameters(model)


def lora_numbers(text: GemmaConfig, rank: int) -> int:
    """14.1: each wrapped layer (in -> out) trains A (rank x in) and B (out x rank)."""
    queries = text.num_attention_heads * text.head_dim
    keys = text.num_key_value_heads * text.head_dim
    d, m = text.hidden_size, text.intermediate_size
    # q, k, v, o, then gate, up, down: in + out of each
    per_block = (d + queries) + 2 * (d + keys) + (queries + d) + 2 * (d + m) + (m + d)
    return text.num_hidden_layers * rank * per_block


def lora_numbers_one_head(text: GemmaConfig, rank: int) -> int:
    """A mistake for 14.1: every attention projection taken as D -> D, true only when heads x head_dim
    = D and every query head has its own key/value head."""
    d, m = text.hidden_size, text.intermediate_size
    return text.num_hidden_layers * rank * (4 * 2 * d + 2 * (d + m) + (m + d))


def unseen_decoders() -> list[tuple[GemmaConfig, int]]:
    """Decoder shapes the chapter did not use: multi-query, grouped-query, head_dim != D / heads."""
    small = GemmaConfig(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16)  # fmt: skip
    return [
        (small, 3),
        (dataclasses.replace(small, num_key_value_heads=1, head_dim=24), 5),
        (dataclasses.replace(small, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3), 1),
    ]


def loss_moves(loss_before: float, loss_after: float) -> str:
    """14.2: did a few LoRA steps change the loss at all?"""
    return "falls" if loss_after < loss_before - 1e-6 else "stays the same"


def loss_that_did_not_move() -> dict:
    """Measurements of a run whose loss did not move, as when only A trains (B stays 0, so the
    update B A x is 0 and A's gradient, B^T times the output's, is 0 too)."""
    return {"loss_before": 15.18, "loss_after": 15.18}


register(
    CodingExercise(
        "14.1",
        reference=lora_parameters_by_wrapping,
        inputs=unseen_decoders,
        solution_function=lora_numbers,
        wrong_function=lora_numbers_one_head,
        tolerance=0,
    ),
    ExperimentExercise(
        "14.2",
        outcome=loss_moves,
        choices=("falls", "stays the same"),
        example_context=loss_that_did_not_move,
    ),
)
