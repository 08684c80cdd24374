"""Exercises of chapter 7, "Attention masks: causal, prefix-LM and padding": expected answers,
solutions, mistakes."""

import torch

from pgemma.exercises.checking import CodingExercise, ExperimentExercise, ValueExercise, register
from pgemma.masks import causal_mask, decoder_mask, prefix_lm_mask

LOGIT_CHOICES = ("equal", "different")


def keys_seen_by_last_suffix_token() -> int:
    """7.1: 1 `<pad>`, 4 image tokens, 3 prefix tokens, 2 suffix tokens; the last one sees every real
    token, itself included, and not the padding key."""
    attention_mask = torch.tensor([[0] + [1] * 9])  # (B, S)
    token_type_ids = torch.tensor([[0] * 8 + [1] * 2])  # (B, T): padding typed 0, as the processor does
    return int(decoder_mask(10, 10, attention_mask, token_type_ids)[0, 0, -1].sum())


def true_entries_prefix_lm_and_causal() -> list[int]:
    """7.2: 266 prefix tokens (256 image + 10 text) and 5 suffix tokens, 271 in all."""
    token_type_ids = torch.tensor([[0] * 266 + [1] * 5])
    return [int(prefix_lm_mask(token_type_ids).sum()), int(causal_mask(271, 271).sum())]


def mask_from_types_and_padding(token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """7.3: big_vision's prefix-LM mask, and no query sees a padding key."""
    blocks = torch.cumsum(token_type_ids, dim=1)  # (B, T)
    visible = blocks[:, None, :] <= blocks[:, :, None]  # (B, T, S): prefix-LM
    return visible & (attention_mask[:, None, :] == 1)  # (B, T, S): and the key is a real token


def mask_hiding_padding_queries(token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """A mistake for 7.3: the padding rows (queries) are emptied, the padding keys stay visible."""
    blocks = torch.cumsum(token_type_ids, dim=1)  # (B, T)
    return (blocks[:, None, :] <= blocks[:, :, None]) & (attention_mask[:, :, None] == 1)


def package_mask(token_type_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`pgemma.masks.decoder_mask` without its head axis: what the reader's mask must equal."""
    length = token_type_ids.shape[1]
    return decoder_mask(length, length, attention_mask, token_type_ids)[:, 0]  # (B, T, S)


def unseen_padded_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of left-padded rows with random prefix and suffix lengths (token_type_ids,
    attention_mask); padding is typed 0, as the processor types it."""
    generator = torch.Generator().manual_seed(707)
    batches = []
    for rows, length in [(2, 9), (3, 12), (1, 5)]:
        types, attention_mask = torch.zeros(rows, length, dtype=torch.long), torch.ones(rows, length, dtype=torch.long)
        for row in range(rows):
            padding = int(torch.randint(0, length // 2, (1,), generator=generator))
            suffix = int(torch.randint(0, length - padding, (1,), generator=generator))
            attention_mask[row, :padding] = 0
            types[row, length - suffix :] = 1
        batches.append((types, attention_mask))
    return batches


def right_padding_logits(difference: float, scale: float) -> str:
    """7.4: whether the right-padded row's logits on its real tokens equal those of the row alone."""
    return LOGIT_CHOICES[0] if difference < 1e-5 * scale else LOGIT_CHOICES[1]


def chapter_right_padding_run() -> dict:
    """The largest logit difference and the largest logit the chapter measured with right padding."""
    return {"difference": 0.0, "scale": 69.9}


register(
    ValueExercise("7.1", expected=keys_seen_by_last_suffix_token, wrong=lambda: 10),
    ValueExercise(
        "7.2", expected=true_entries_prefix_lm_and_causal, wrong=lambda: [266 * 266 + 5 * 271, 271 * 270 // 2]
    ),
    CodingExercise(
        "7.3",
        reference=package_mask,
        inputs=unseen_padded_batches,
        solution_function=mask_from_types_and_padding,
        wrong_function=mask_hiding_padding_queries,
    ),
    ExperimentExercise(
        "7.4", outcome=right_padding_logits, choices=LOGIT_CHOICES, example_context=chapter_right_padding_run
    ),
)
