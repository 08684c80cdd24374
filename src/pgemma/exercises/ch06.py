"""Exercises of chapter 6, "The KV-cache": expected answers, solutions, mistakes."""

import torch

from pgemma.attention import attention
from pgemma.config import PaliGemmaConfig
from pgemma.exercises.checking import CodingExercise, ExperimentExercise, ValueExercise, register
from pgemma.masks import causal_mask

ANSWER_CHOICES = ("the same answers", "different answers")


def cache_bytes_448() -> int:
    """6.1: 1024 image tokens + 64 text tokens, each 2 L K H numbers of 2 bytes (bfloat16); the
    decoder is the same at every resolution."""
    text = PaliGemmaConfig.paligemma_3b_224().text_config
    per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * 2
    return (1024 + 64) * per_token


def scores_with_and_without_cache() -> list[int]:
    """6.2: the new query against the 400 keys, or all 400 queries against all 400 keys."""
    return [400, 400 * 400]


def decode_step_with_cache(
    k_cache: torch.Tensor, v_cache: torch.Tensor, q_new: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor
) -> torch.Tensor:
    """6.3: append the new key and value, then one query against every key: no mask needed."""
    k = torch.cat([k_cache, k_new])  # (S, H): the cached keys and the new one
    v = torch.cat([v_cache, v_new])  # (S, H)
    weights = (q_new @ k.T / k.shape[-1] ** 0.5).softmax(dim=-1)  # (1, S)
    return weights @ v  # (1, H)


def decode_step_forgetting_the_new_token(
    k_cache: torch.Tensor, v_cache: torch.Tensor, q_new: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor
) -> torch.Tensor:
    """A mistake for 6.3: attending over the cache only, without the new token's own key and value."""
    weights = (q_new @ k_cache.T / k_cache.shape[-1] ** 0.5).softmax(dim=-1)  # (1, S - 1)
    return weights @ v_cache  # (1, H)


def last_row_of_causal_attention(
    k_cache: torch.Tensor, v_cache: torch.Tensor, q_new: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor
) -> torch.Tensor:
    """The package's attention for the last query of the sequence, under the causal mask."""
    k = torch.cat([k_cache, k_new])[None, None]  # (1, 1, S, H)
    v = torch.cat([v_cache, v_new])[None, None]  # (1, 1, S, H)
    return attention(q_new[None, None], k, v, causal_mask(1, k.shape[2]))[0, 0]  # (1, H)


def unseen_decode_steps() -> list[tuple[torch.Tensor, ...]]:
    """Caches of several lengths S - 1 and head widths H, with a new token's q, k, v of shape (1, H)."""
    generator = torch.Generator().manual_seed(606)
    inputs = []
    for cached, head_dim in [(9, 16), (1, 8), (30, 64)]:
        k_cache, v_cache = torch.randn(2, cached, head_dim, generator=generator).unbind(0)
        q_new, k_new, v_new = torch.randn(3, 1, head_dim, generator=generator).unbind(0)
        inputs.append((k_cache, v_cache, q_new, k_new, v_new))
    return inputs


def positions_of_fifth_answer_token(calls: list) -> list[int]:
    """6.4a: each row continues its own count: its last prompt position + 5 (what generate fed)."""
    step_positions, _ = calls[5]  # calls[0] is the prefill, calls[i] feeds answer token i
    return step_positions[:, 0].tolist()  # (B, 1) -> one position per row


def cache_slot_of_fifth_answer_token(calls: list) -> int:
    """6.4b: one slot for the whole batch, the cache's length: prompt columns + 4 earlier answer tokens."""
    _, slot = calls[5]
    return slot


def recorded_calls() -> dict:
    """What the chapter's hook records for its padded batch (22 columns, row 0 with 2 `<pad>`s):
    the prefill's positions, then each decode step's positions and first cache slot."""
    prompt = torch.tensor([[1, 1] + list(range(1, 21)), list(range(1, 23))])  # (B, T)
    steps = [(torch.tensor([[20 + i], [22 + i]]), 21 + i) for i in range(1, 16)]
    return {"calls": [(prompt, 0), *steps]}


def same_answers(experiment_answers: list[str], generate_answers: list[str]) -> str:
    """6.5: whether the loop with the experiment's positions writes `generate`'s answers."""
    return ANSWER_CHOICES[0] if experiment_answers == generate_answers else ANSWER_CHOICES[1]


def chapter_positions_run() -> dict:
    """The answers the chapter measured, row 0's positions counted from its first column, and
    `generate`'s (the same strings)."""
    answers = [
        "<loc0112><loc0464><loc0400><loc0768> square",
        "<loc0224><loc0000><loc0512><loc0288> circle ; <loc0560><loc0560><loc0928><loc0928> triangle",
    ]
    return {"experiment_answers": answers, "generate_answers": answers}


register(
    ValueExercise("6.1", expected=cache_bytes_448, wrong=lambda: cache_bytes_448() // 2),
    ValueExercise("6.2", expected=scores_with_and_without_cache, wrong=lambda: [400, 400 * 401 // 2]),
    CodingExercise(
        "6.3",
        reference=last_row_of_causal_attention,
        inputs=unseen_decode_steps,
        solution_function=decode_step_with_cache,
        wrong_function=decode_step_forgetting_the_new_token,
    ),
    ValueExercise(
        "6.4a",
        expected=positions_of_fifth_answer_token,
        wrong=lambda calls: [calls[5][1] + 1] * 2,
        example_context=recorded_calls,
    ),
    ValueExercise(
        "6.4b",
        expected=cache_slot_of_fifth_answer_token,
        wrong=lambda calls: calls[5][1] + 1,
        example_context=recorded_calls,
    ),
    ExperimentExercise("6.5", outcome=same_answers, choices=ANSWER_CHOICES, example_context=chapter_positions_run),
)
