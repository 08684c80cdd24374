"""How well a model does the world's tasks on held-out scenes.

Book chapter: "Assembling PaliGemma". Used during stage 1 (the curves) and at the end of a run.
"""

from collections.abc import Sequence

import numpy as np
import torch

from pgemma.config import IGNORE_INDEX
from pgemma.generate import generate
from pgemma.loc_tokens import parse_loc_tokens
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.processor import PaliGemmaProcessor
from pgemma.train.data import forward, process
from pgemma.world import TASKS, WorldConfig, box_iou, example, split_seeds


@torch.no_grad()
def evaluate(
    model: PaliGemmaForConditionalGeneration,
    processor: PaliGemmaProcessor,
    world: WorldConfig,
    num_scenes: int = 300,
    batch_size: int = 50,
    generate_boxes: bool = True,
    seeds: Sequence[int] | None = None,
) -> dict[str, float]:
    """Per-task exact match on held-out scenes (every task on each scene), and detection mean IoU.

    Exact match uses teacher forcing: a greedy answer equals the target exactly when the argmax
    at every answer position, <eos> included, is the target token, so this is the number
    generation would give, for one forward pass. Boxes come from greedy generation with the KV
    cache (or, with `generate_boxes=False`, from the teacher-forced argmax: cheaper, a little
    optimistic). An object that the answer does not name counts as IoU 0. `seeds` picks the
    scenes (default: the first `num_scenes` held-out ones; `num_scenes` is then their number).
    """
    was_training = model.training
    model.eval()
    if seeds is None:
        seeds = [seed for _, seed in zip(range(num_scenes), split_seeds("heldout"))]
    num_scenes = len(seeds)
    correct = dict.fromkeys(TASKS, 0)
    ious = []
    for task in TASKS:
        for start in range(0, num_scenes, batch_size):
            examples = [example(seed, world, task=task) for seed in seeds[start : start + batch_size]]
            batch = process(processor, examples)
            predicted = forward(model, batch).logits[:, :-1].argmax(-1)  # (B, T - 1): token t + 1
            targets = batch.labels[:, 1:]
            scored = targets != IGNORE_INDEX
            correct[task] += int(((predicted == targets) | ~scored).all(1).sum())
            if task != "detect":
                continue
            if generate_boxes:
                answers = generate(model, processor, [ex.image for ex in examples], [ex.prefix for ex in examples])
            else:
                answers = [processor.decode(p[m].tolist()) for p, m in zip(predicted, scored)]
            for ex, answer in zip(examples, answers):
                found = {label: box for box, label in reversed(parse_loc_tokens(answer, world.image_size))}
                for box, label in parse_loc_tokens(ex.suffix, world.image_size):
                    ious.append(box_iou(found[label], box) if label in found else 0.0)
    model.train(was_training)
    return {**{f"{task}_exact": correct[task] / num_scenes for task in TASKS}, "detect_iou": float(np.mean(ious))}
