"""Exercises of chapter 10, "The PaliGemma processor": expected answers, solutions, mistakes."""

from __future__ import annotations

import numpy as np
import torch

from pgemma.config import IGNORE_INDEX
from pgemma.exercises.checking import CodingExercise, ExperimentExercise, ValueExercise, register
from pgemma.exercises.shipped_runs import VERDICTS, scores, verdict
from pgemma.loc_tokens import boxes_to_loc_tokens
from pgemma.processor import PaliGemmaProcessor, ProcessorBatch
from pgemma.samples import sample_photo
from pgemma.shipped import load_shipped_model
from pgemma.tokenizer import BOS, train_tokenizer

CHANGES = ("skip normalize", "drop newline", "drop <bos>", "swap red and blue")


def loc_token_of_y_300() -> str:
    """10.1: y_min = 300 pixels on the photo, a fraction of its height cut into 1024 bins."""
    height = sample_photo().height  # 600
    k = min(1023, int(1024 * 300 / height))
    return f"<loc{k:04d}>"


def loc_token_of_y_300_by_width() -> str:
    """A mistake for 10.1: a y coordinate divided by the width instead of the height."""
    k = min(1023, int(1024 * 300 / sample_photo().width))
    return f"<loc{k:04d}>"


def labelled_tokens_of_row_2(train_batch: ProcessorBatch) -> int:
    """10.2: the positions whose label is a token id: the suffix and its <eos>."""
    return int((train_batch.labels[2] != IGNORE_INDEX).sum())


def labelled_tokens_without_eos(train_batch: ProcessorBatch) -> int:
    """A mistake for 10.2: the answer's tokens, forgetting that <eos> is trained on too."""
    return labelled_tokens_of_row_2(train_batch) - 1


def example_batch() -> dict:
    """A training batch of three rows for the test suite (the chapter passes its own)."""
    texts = ["caption en", "a red circle", "detect circle", "answer en what colour is the square?", "blue"]
    processor = PaliGemmaProcessor(train_tokenizer(texts, vocab_size=1200), image_size=32, num_image_tokens=4)
    images = [np.zeros((32, 32, 3), dtype=np.uint8)] * 3
    batch = processor(images, ["caption en", "detect circle", "answer en what colour is the square?"],
                      ["a red circle", "<loc0010><loc0020><loc0500><loc0600> circle", "blue"])  # fmt: skip
    return {"train_batch": batch}


def largest_error_at_bin_centres() -> float:
    """10.3: reading bin k back at its centre, (k + 0.5) s / 1024, over every whole pixel of s = 600."""
    side = 600
    v = np.arange(side + 1)  # every whole-pixel coordinate, the far edge included
    k = np.minimum(1023, (1024 * v / side).astype(int))
    return float(np.abs(v - (k + 0.5) * side / 1024).max())


def largest_error_at_bin_starts() -> float:
    """A mistake for 10.3: the error of the chapter's read-back, at the start of each bin."""
    side = 600
    v = np.arange(side + 1)
    k = np.minimum(1023, (1024 * v / side).astype(int))
    return float(np.abs(v - k * side / 1024).max())


def box_to_loc_tokens(box: tuple[float, float, float, float], height: int, width: int) -> str:
    """10.4: y by the height, x by the width, 1024 bins each, the far edge clamped into bin 1023."""
    sides = (height, width, height, width)
    bins = [min(1023, int(1024 * v / side)) for v, side in zip(box, sides)]
    return "".join(f"<loc{k:04d}>" for k in bins)


def box_to_loc_tokens_unclamped(box: tuple[float, float, float, float], height: int, width: int) -> str:
    """A mistake for 10.4: without the clamp, a box touching the far edge writes <loc1024>."""
    sides = (height, width, height, width)
    return "".join(f"<loc{int(1024 * v / side):04d}>" for v, side in zip(box, sides))


def package_loc_tokens(box: tuple[float, float, float, float], height: int, width: int) -> str:
    """`pgemma.loc_tokens.boxes_to_loc_tokens`, with the exercise's arguments."""
    return boxes_to_loc_tokens(box, (height, width))


def unseen_boxes() -> list[tuple]:
    """Boxes in images of several sizes, some touching the border, with whole and fractional pixels."""
    generator = torch.Generator().manual_seed(1010)
    cases = []
    for height, width in [(600, 512), (64, 64), (37, 1000), (224, 224), (481, 95)]:
        y = sorted((torch.rand(2, generator=generator) * height).tolist())
        x = sorted((torch.rand(2, generator=generator) * width).tolist())
        cases.append(((y[0], x[0], y[1], x[1]), height, width))
        cases.append(((0, 0, height, width), height, width))  # the whole image
        cases.append(((round(y[0]), round(x[0]), height, round(x[1])), height, width))
    return cases


class ChangedProcessor(PaliGemmaProcessor):
    """The shipped model's processor with one step changed (exercise 10.5).

    - "skip normalize": pixel values stay in [0, 1] instead of [-1, 1];
    - "drop newline": the prompt ends without the "\\n" that separates it from the answer;
    - "drop <bos>": no <bos> between the image tokens and the prompt;
    - "swap red and blue": the colour planes in the order blue, green, red.
    """

    def __init__(self, processor: PaliGemmaProcessor, change: str) -> None:
        if change not in CHANGES:
            raise ValueError(f"change must be one of {CHANGES}, got {change!r}")
        super().__init__(processor.tokenizer, processor.image_size, processor.num_image_tokens, processor.max_length)
        self.change = change

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        return pixels if self.change == "skip normalize" else super().normalize(pixels)

    def build_prompt(self, prompt: str) -> str:
        text = super().build_prompt(prompt)
        if self.change == "drop newline":
            return text.removesuffix("\n")
        return text.replace(BOS, "") if self.change == "drop <bos>" else text

    def preprocess_image(self, image) -> torch.Tensor:
        pixels = super().preprocess_image(image)  # (C, I, I)
        return pixels.flip(0) if self.change == "swap red and blue" else pixels


def run_with_changed_processor(change: str, num_scenes: int = 16) -> tuple[dict, dict]:
    """The shipped model's scores on held-out scenes with its own processor, then with `change`."""
    model, processor = load_shipped_model()
    return scores(model, processor, num_scenes), scores(model, ChangedProcessor(processor, change), num_scenes)


def what_survives_the_change(before: dict, after: dict) -> str:
    """10.5: what the run measured, as one of `VERDICTS`.

    What one sees, on 16 held-out scenes: skipping the normalization keeps the words (the shapes'
    colours and kinds still stand out in [0, 1]) but the boxes fall: the tower's features shift
    and the fine position of an edge, read from them, moves. Dropping the newline breaks both: the
    model was always asked to answer after a newline, and without it the first answer token is
    predicted where it never was. Dropping <bos> costs the boxes, not the words. Swapping red and
    blue breaks the colour words (and the captions, which name colours) but not the counts or the
    boxes, which do not depend on colour. In every case the model still writes well-formed answers:
    nothing warns that they are wrong.
    """
    return verdict(before, after)


def recorded_run() -> dict:
    """The scores the chapter's cell prints, with "skip normalize" (for the test suite, which does
    not load the model: `tests/test_exercise_experiments.py` tests the changes)."""
    before = {"caption_exact": 1.0, "colour_exact": 1.0, "count_exact": 1.0, "detect_exact": 0.12, "detect_iou": 0.93}
    return {"before": before, "after": {**before, "caption_exact": 0.88, "detect_exact": 0.0, "detect_iou": 0.62}}


register(
    ValueExercise("10.1", expected=loc_token_of_y_300, wrong=loc_token_of_y_300_by_width),
    ValueExercise(
        "10.2", expected=labelled_tokens_of_row_2, wrong=labelled_tokens_without_eos, example_context=example_batch
    ),
    ValueExercise("10.3", expected=largest_error_at_bin_centres, wrong=largest_error_at_bin_starts, tolerance=1e-3),
    CodingExercise(
        "10.4",
        reference=package_loc_tokens,
        inputs=unseen_boxes,
        solution_function=box_to_loc_tokens,
        wrong_function=box_to_loc_tokens_unclamped,
    ),
    ExperimentExercise("10.5", outcome=what_survives_the_change, choices=VERDICTS, example_context=recorded_run),
)
