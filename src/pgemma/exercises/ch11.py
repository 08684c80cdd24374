"""Exercises of chapter 11, "Assembling PaliGemma": expected answers, solutions, mistakes."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from types import SimpleNamespace

import torch

from pgemma.config import IGNORE_INDEX, PaliGemmaConfig
from pgemma.exercises.checking import CodingExercise, ExperimentExercise, ValueExercise, register
from pgemma.exercises.shipped_runs import VERDICTS, scores, verdict
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.processor import ProcessorBatch, load_processor
from pgemma.shipped import SHIPPED_WORLD, load_shipped_model, shipped_model_folder
from pgemma.train.data import process
from pgemma.world import TASKS, example, split_seeds

CHANGES = ("unscaled", "shuffled patches", "another scene's image", "no image")


def projector_parameters_3b() -> int:
    """11.1: one Linear layer from SigLIP's width to Gemma's, with its bias."""
    config = PaliGemmaConfig.paligemma_3b_224()
    return config.vision_config.hidden_size * config.projection_dim + config.projection_dim


def projector_weights_only() -> int:
    """A mistake for 11.1: the weight matrix without the bias."""
    config = PaliGemmaConfig.paligemma_3b_224()
    return config.vision_config.hidden_size * config.projection_dim


@cache
def paligemma_3b_sizes() -> tuple[int, int]:
    """(embedding table, every parameter) of PaliGemma-3B, counted on the meta device (shapes, no
    memory); `parameters()` lists the tied output head once, as the embedding. Computed once."""
    with torch.device("meta"):
        model = PaliGemmaForConditionalGeneration(PaliGemmaConfig.paligemma_3b_224())
    embedding = model.language_model.model.embed_tokens.weight.numel()
    return embedding, sum(p.numel() for p in model.parameters())


def embedding_share_3b() -> float:
    """11.2: the V x D embedding table over every parameter, the tied output head counted once."""
    embedding, total = paligemma_3b_sizes()
    return embedding / total


def embedding_share_head_counted_twice() -> float:
    """A mistake for 11.2: the output head counted as a second V x D matrix."""
    embedding, total = paligemma_3b_sizes()
    return 2 * embedding / (total + embedding)


def positions_with_a_loss(batch: ProcessorBatch) -> torch.Tensor:
    """11.3: where the detection row's label is a token id, the answer and its <eos>: bool[T]."""
    return batch.labels[TASKS.index("detect")] != IGNORE_INDEX


def positions_that_predict_the_answer(batch: ProcessorBatch) -> torch.Tensor:
    """A mistake for 11.3: the positions whose logits are scored (one to the left of the labels)."""
    return positions_with_a_loss(batch).roll(-1)


def example_batch() -> dict:
    """A batch like the chapter's: one held-out scene per task, with answers, the shipped processor."""
    processor = load_processor(shipped_model_folder())
    scenes = [example(seed, SHIPPED_WORLD, task=task) for seed, task in zip(split_seeds("heldout"), TASKS)]
    return {"batch": process(processor, scenes)}


def merge_image_and_text(
    input_ids: torch.Tensor, text_embeds: torch.Tensor, image_features: torch.Tensor, image_token_index: int
) -> torch.Tensor:
    """11.4: each row's <image> slots, in order, get that row's image features divided by sqrt(D)."""
    merged = text_embeds.clone()  # (B, T, D)
    width = text_embeds.shape[-1]
    for row in range(input_ids.shape[0]):
        slots = (input_ids[row] == image_token_index).nonzero().flatten()  # (P,)
        merged[row, slots] = image_features[row] / width**0.5  # (P, D)
    return merged


def merge_unscaled(
    input_ids: torch.Tensor, text_embeds: torch.Tensor, image_features: torch.Tensor, image_token_index: int
) -> torch.Tensor:
    """A mistake for 11.4: the features as the projector made them, which the decoder then
    multiplies by sqrt(D) with the text embeddings."""
    merged = text_embeds.clone()
    merged[input_ids == image_token_index] = image_features.reshape(-1, text_embeds.shape[-1])
    return merged


def package_merge(
    input_ids: torch.Tensor, text_embeds: torch.Tensor, image_features: torch.Tensor, image_token_index: int
) -> torch.Tensor:
    """`PaliGemmaForConditionalGeneration.merge_image_and_text`, called with only the two config
    fields it reads (no model is built)."""
    config = SimpleNamespace(
        image_token_index=image_token_index, text_config=SimpleNamespace(hidden_size=text_embeds.shape[-1])
    )
    return PaliGemmaForConditionalGeneration.merge_image_and_text(
        SimpleNamespace(config=config), input_ids, text_embeds, image_features
    )


def unseen_prompts() -> list[tuple]:
    """Left-padded rows of ids with P <image> tokens each, their text embeddings and image features."""
    generator = torch.Generator().manual_seed(1111)
    cases = []
    for batch, patches, text, width, image_token in [(1, 4, 3, 8, 7), (3, 9, 5, 16, 50), (2, 16, 6, 64, 3)]:
        rows = []
        for row in range(batch):
            words = torch.randint(image_token + 1, image_token + 100, (text + 2 * row,), generator=generator)
            rows.append([image_token] * patches + words.tolist())
        length = max(len(row) for row in rows)
        input_ids = torch.tensor([[0] * (length - len(row)) + row for row in rows])  # (B, T), left-padded
        text_embeds = torch.randn(batch, length, width, generator=generator)  # (B, T, D)
        image_features = torch.randn(batch, patches, width, generator=generator)  # (B, P, D)
        cases.append((input_ids, text_embeds, image_features, image_token))
    return cases


def feature_change(change: str, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """What exercise 11.5 does to the projector's output, float[B, P, D]."""
    generator = torch.Generator().manual_seed(0)
    changes = {
        "unscaled": lambda features: features * width**0.5,  # the merge's division by sqrt(D) undone
        "shuffled patches": lambda features: features[:, torch.randperm(features.shape[1], generator=generator)],
        "another scene's image": lambda features: features.roll(1, dims=0),  # row b gets row b - 1's image
        "no image": torch.zeros_like,
    }
    if change not in changes:
        raise ValueError(f"change must be one of {CHANGES}, got {change!r}")
    return changes[change]


def run_with_changed_features(change: str, num_scenes: int = 16) -> tuple[dict, dict]:
    """The shipped model's scores on held-out scenes as it is, then with its image features changed
    (a forward hook on the projector replaces its output)."""
    model, processor = load_shipped_model()
    before = scores(model, processor, num_scenes)
    changed = feature_change(change, model.config.text_config.hidden_size)
    hook = model.multi_modal_projector.register_forward_hook(lambda module, inputs, output: changed(output))
    try:
        after = scores(model, processor, num_scenes)
    finally:
        hook.remove()
    return before, after


def what_survives_the_change(before: dict, after: dict) -> str:
    """11.5: what the run measured, as one of `VERDICTS`.

    What one sees, on 16 held-out scenes: shuffling the patches keeps every word right and breaks
    the boxes. The features say *what* is in the image (SigLIP's attention already spread each
    shape's colour and kind over many patches), but the decoder reads *where* from which <image>
    slot a feature sits in. Without the division by sqrt(D) the features enter the decoder sqrt(D)
    times larger than in training; the text mostly holds and the boxes fall. Another scene's
    features, or none, break both: the model answers fluently about a scene it does not see.
    """
    return verdict(before, after)


def recorded_run() -> dict:
    """The scores of the chapter's cell run with "no image", on its 16 scenes (for the test suite,
    which does not load the model: `tests/test_exercise_experiments.py` tests the changes)."""
    before = {"caption_exact": 1.0, "colour_exact": 1.0, "count_exact": 1.0, "detect_exact": 0.12, "detect_iou": 0.93}
    after = {"caption_exact": 0.0, "colour_exact": 0.25, "count_exact": 0.44, "detect_exact": 0.0, "detect_iou": 0.10}
    return {"before": before, "after": after}


register(
    ValueExercise("11.1", expected=projector_parameters_3b, wrong=projector_weights_only),
    ValueExercise("11.2", expected=embedding_share_3b, wrong=embedding_share_head_counted_twice, tolerance=1e-3),
    ValueExercise(
        "11.3", expected=positions_with_a_loss, wrong=positions_that_predict_the_answer, example_context=example_batch
    ),
    CodingExercise(
        "11.4",
        reference=package_merge,
        inputs=unseen_prompts,
        solution_function=merge_image_and_text,
        wrong_function=merge_unscaled,
    ),
    ExperimentExercise("11.5", outcome=what_survives_the_change, choices=VERDICTS, example_context=recorded_run),
)
