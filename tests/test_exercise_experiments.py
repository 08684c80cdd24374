"""The experiments of exercises 10.5 and 11.5: each change does what its name says, and the verdict
reads the scores."""

import numpy as np
import pytest
import torch

from pgemma.exercises.ch10 import CHANGES, ChangedProcessor
from pgemma.exercises.ch11 import feature_change
from pgemma.exercises.shipped_runs import verdict
from pgemma.processor import load_processor
from pgemma.shipped import shipped_model_folder


@pytest.fixture(scope="module")
def shipped_processor():
    return load_processor(shipped_model_folder())


def test_each_processor_change_changes_only_its_step(shipped_processor):
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[..., 0] = 255  # pure red
    as_shipped = shipped_processor(image, "caption en")
    text_changes = ("drop newline", "drop <bos>")
    for change in CHANGES:
        changed = ChangedProcessor(shipped_processor, change)(image, "caption en")
        assert torch.equal(changed.pixel_values, as_shipped.pixel_values) == (change in text_changes), change
        assert torch.equal(changed.input_ids, as_shipped.input_ids) == (change not in text_changes), change
    red, _, blue = ChangedProcessor(shipped_processor, "swap red and blue")(image, "caption en").pixel_values[
        0, :, 0, 0
    ]
    assert (red.item(), blue.item()) == (-1.0, 1.0)
    skipped = ChangedProcessor(shipped_processor, "skip normalize")(image, "caption en").pixel_values
    assert skipped.min().item() == 0.0 and skipped.max().item() == 1.0
    newline = shipped_processor.tokenizer.token_to_id("\n")
    dropped = ChangedProcessor(shipped_processor, "drop newline")(image, "caption en").input_ids[0]
    assert as_shipped.input_ids[0, -1] == newline and newline not in dropped.tolist()
    bos = shipped_processor.tokenizer.bos_id
    assert bos not in ChangedProcessor(shipped_processor, "drop <bos>")(image, "caption en").input_ids[0].tolist()


def test_an_unknown_change_is_named(shipped_processor):
    with pytest.raises(ValueError, match="change must be one of"):
        ChangedProcessor(shipped_processor, "drop the image")
    with pytest.raises(ValueError, match="change must be one of"):
        feature_change("louder", width=16)


def test_feature_changes():
    features = torch.randn(3, 4, 16)  # (B, P, D)
    assert torch.allclose(feature_change("unscaled", 16)(features), features * 4)
    shuffled = feature_change("shuffled patches", 16)(features)
    assert not torch.equal(shuffled, features)
    assert torch.equal(shuffled.sort(dim=1).values, features.sort(dim=1).values)  # the same patches
    assert torch.equal(feature_change("another scene's image", 16)(features)[1], features[0])
    assert not feature_change("no image", 16)(features).any()


@pytest.mark.parametrize(
    "words, iou, expected",
    [
        (1.0, 0.9, "both hold"),
        (1.0, 0.5, "words hold, boxes fall"),
        (0.5, 0.9, "words fall, boxes hold"),
        (0.5, 0.5, "both fall"),
        (0.95, 0.85, "both hold"),  # within 0.1 of the scores as shipped
    ],
)
def test_verdict(words, iou, expected):
    before = {"caption_exact": 1.0, "colour_exact": 1.0, "count_exact": 1.0, "detect_iou": 0.9}
    after = {"caption_exact": words, "colour_exact": words, "count_exact": words, "detect_iou": iou}
    assert verdict(before, after) == expected
