"""The shipped model's scores with one thing changed: the experiments of chapters 10 and 11.

Both chapters change one step between the image and the decoder (a processor step, or the image
features) and ask the reader to predict what the shipped model then gets right. The scores are
`pgemma.train.evaluation.evaluate`'s on held-out scenes, with boxes read from the teacher-forced
argmax (one forward pass per task, no generation), and the verdict compares them with the scores
of the model as it ships.
"""

from __future__ import annotations

from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.processor import PaliGemmaProcessor
from pgemma.shipped import SHIPPED_WORLD
from pgemma.train.evaluation import evaluate

TEXT_TASKS = ("caption", "colour", "count")
VERDICTS = ("both hold", "words hold, boxes fall", "words fall, boxes hold", "both fall")
FALL = 0.1  # a score that loses more than this has fallen


def scores(model: PaliGemmaForConditionalGeneration, processor: PaliGemmaProcessor, num_scenes: int) -> dict:
    """Exact match of each text task and the mean IoU of the boxes, on the first held-out scenes."""
    return evaluate(model, processor, SHIPPED_WORLD, num_scenes, batch_size=num_scenes, generate_boxes=False)


def words_score(scores: dict) -> float:
    """The mean exact match of the three tasks answered in words."""
    return sum(scores[f"{task}_exact"] for task in TEXT_TASKS) / len(TEXT_TASKS)


def verdict(before: dict, after: dict) -> str:
    """Which of the words and the boxes fell by more than `FALL` from `before` to `after`."""
    words_fell = words_score(after) < words_score(before) - FALL
    boxes_fell = after["detect_iou"] < before["detect_iou"] - FALL
    if words_fell:
        return "both fall" if boxes_fell else "words fall, boxes hold"
    return "words hold, boxes fall" if boxes_fell else "both hold"


def print_scores(before: dict, after: dict, change: str) -> None:
    """The two runs side by side, one row per score."""
    print(f"{'':>14} {'as shipped':>10} {change:>24}")
    for name in [f"{task}_exact" for task in TEXT_TASKS] + ["detect_iou"]:
        print(f"{name:>14} {before[name]:10.2f} {after[name]:24.2f}")
