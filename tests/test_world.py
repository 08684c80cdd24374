import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgemma.loc_tokens import boxes_to_loc_tokens, parse_loc_tokens
from pgemma.world import (
    HELDOUT_START,
    PALETTE,
    TASKS,
    Shape,
    WorldConfig,
    box_iou,
    caption,
    example,
    render,
    sample_scene,
    scene_tasks,
    split_of,
    split_seeds,
    text_corpus,
)

seeds = st.integers(min_value=0, max_value=2 * HELDOUT_START)


@settings(max_examples=30, deadline=None)
@given(seeds)
def test_an_example_is_a_pure_function_of_its_seed(seed):
    a, b = example(seed), example(seed)
    assert (a.prefix, a.suffix, a.task, a.scene) == (b.prefix, b.suffix, b.task, b.scene)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_different_seeds_give_different_scenes():
    scenes = {sample_scene(seed).shapes for seed in range(200)}
    assert len(scenes) > 190


@settings(max_examples=60, deadline=None)
@given(seeds)
def test_boxes_match_the_drawn_pixels(seed):
    scene = sample_scene(seed)
    pixels = np.asarray(render(scene)).astype(int)  # (I, I, C)
    for shape in scene.shapes:
        ys, xs = np.nonzero((pixels == np.array(shape.rgb)).all(axis=-1))
        assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == shape.box


@settings(max_examples=60, deadline=None)
@given(seeds)
def test_answers_are_consistent_with_the_scene(seed):
    scene = sample_scene(seed)
    tasks = scene_tasks(scene)
    kinds = [s.kind for s in scene.shapes]
    assert len(set(kinds)) == len(kinds), "a colour question must have one answer"
    assert tasks["count"] == ("answer en how many shapes?", str(len(scene.shapes)))

    question, answer = tasks["colour"]
    asked = question.removeprefix("answer en what colour is the ").removesuffix("?")
    assert answer == next(s.colour for s in scene.shapes if s.kind == asked)

    assert tasks["caption"][1].count(" left of ") == len(scene.shapes) - 1
    centres = [(s.box[1] + s.box[3]) / 2 for s in scene.shapes]
    assert centres == sorted(centres), "the caption names shapes left to right"

    prompt, answer = tasks["detect"]
    labels = prompt.removeprefix("detect ").split(" ; ")
    detections = parse_loc_tokens(answer, scene.size)
    assert [label for _, label in detections] == labels
    for box, label in detections:
        truth = next(s.box for s in scene.shapes if s.kind == label)
        assert box_iou(box, truth) > 0.95


def test_caption_and_detection_format():
    scene = sample_scene(0)
    assert caption(scene).startswith("a ")
    orange, red = (
        Shape("square", "orange", PALETTE["orange"], (0, 0, 8, 8)),
        Shape("circle", "red", PALETTE["red"], (0, 10, 8, 18)),
    )
    assert caption(scene._replace(shapes=(orange, red))) == "an orange square left of a red circle"
    assert boxes_to_loc_tokens((0, 16, 32, 64), 64) == "<loc0000><loc0256><loc0512><loc1023>"
    two = "<loc0000><loc0000><loc0512><loc0512> circle ; <loc0512><loc0512><loc1023><loc1023> square"
    assert [label for _, label in parse_loc_tokens(two, 64)] == ["circle", "square"]
    assert parse_loc_tokens(two, 64)[0][0] == (0.0, 0.0, 32.0, 32.0)


def test_every_task_appears_and_can_be_forced():
    assert {example(seed).task for seed in range(100)} == set(TASKS)
    assert example(7, task="count").prefix == "answer en how many shapes?"
    with pytest.raises(ValueError, match="task must be one of"):
        example(7, task="segment")


def test_splits_are_disjoint():
    train, heldout = split_seeds("train"), split_seeds("heldout")
    assert [next(train) for _ in range(3)] == [0, 1, 2]
    assert next(heldout) == HELDOUT_START
    assert split_of(HELDOUT_START - 1) == "train" and split_of(HELDOUT_START) == "heldout"
    last_train = list(split_seeds("train", start=HELDOUT_START - 2))
    assert last_train == [HELDOUT_START - 2, HELDOUT_START - 1], "training seeds stop at the held-out range"


def test_tiny_world_and_config_errors():
    cfg = WorldConfig.tiny()
    assert example(3, cfg).image.size == (32, 32)
    with pytest.raises(ValueError, match="do not fit"):
        WorldConfig(image_size=32, max_shapes=3, min_side=14)
    with pytest.raises(ValueError, match="unknown colours"):
        WorldConfig(colours=("mauve",))


def test_text_corpus_has_words_but_no_loc_tokens():
    corpus = text_corpus(num_scenes=50)
    assert all("<loc" not in text for text in corpus)
    words = set(" ".join(corpus).split())
    assert {"caption", "answer", "detect", "left", "red", "circle", "colour"} <= words
