"""Tests for pgemma.shipped: the model that ships with pgemma, where it is, and what it can do."""

import json
from dataclasses import asdict

import pytest
import torch

from pgemma.shipped import SHIPPED_WORLD, load_shipped_model, shipped_model_folder
from pgemma.train.data import forward, process
from pgemma.train.evaluation import evaluate
from pgemma.train.recipe import Recipe
from pgemma.world import HELDOUT_START, example


def shipped_examples(count=6):
    seeds, tasks = range(HELDOUT_START, HELDOUT_START + count), ["caption", "colour", "count", "detect"] * count
    return [example(seed, SHIPPED_WORLD, task=task) for seed, task in zip(seeds, tasks)]


def test_the_shipped_world_is_the_one_the_model_was_trained_on():
    trained_on = json.loads(shipped_model_folder().joinpath("recipe.json").read_text())["world"]
    assert trained_on == json.loads(json.dumps(asdict(SHIPPED_WORLD)))  # tuples as JSON lists
    assert Recipe.shipped().world == SHIPPED_WORLD


def test_the_shipped_model_gives_the_same_logits_in_pgemma_and_transformers():
    transformers = pytest.importorskip("transformers")
    model, processor = load_shipped_model()
    batch = process(processor, shipped_examples())
    ours = forward(model, batch).logits
    reference = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
        shipped_model_folder(), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        theirs = reference(
            input_ids=batch.input_ids,
            pixel_values=batch.pixel_values,
            attention_mask=batch.attention_mask,
            token_type_ids=batch.token_type_ids,
        ).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_the_shipped_model_answers_held_out_scenes():
    model, processor = load_shipped_model()
    assert shipped_model_folder().joinpath("model.safetensors").stat().st_size < 20_000_000
    scores = evaluate(model, processor, SHIPPED_WORLD, num_scenes=40, batch_size=40)
    assert min(scores["caption_exact"], scores["colour_exact"], scores["count_exact"]) >= 0.95, scores
    assert scores["detect_iou"] >= 0.75, scores
