"""The data of a training step: which examples, their batch, stage 0's per-patch labels.

Book chapter: "Assembling PaliGemma". Every batch is a pure function of the step number (the
world draws each example from its seed), so a resumed run sees exactly the data it would have.
"""

import numpy as np
import torch

from pgemma.config import IGNORE_INDEX
from pgemma.paligemma import PaliGemmaForConditionalGeneration, PaliGemmaOutput
from pgemma.processor import PaliGemmaProcessor, ProcessorBatch
from pgemma.train import distributed
from pgemma.train.recipe import StageConfig
from pgemma.world import Example, WorldConfig, example


def training_examples(step: int, world: WorldConfig, cfg: StageConfig, stage: int) -> list[Example]:
    """The batch of a step (on several ranks, this rank's slice). Each stage reads its own run of seeds."""
    start = stage * 100_000_000 + step * cfg.batch_size
    return [example(seed, world) for seed in distributed.shard(range(start, start + cfg.batch_size))]


def process(processor: PaliGemmaProcessor, examples: list[Example], with_answers: bool = True) -> ProcessorBatch:
    """Examples in PaliGemma's prompt format, with labels on the answers when `with_answers`."""
    suffixes = [ex.suffix for ex in examples] if with_answers else None
    return processor([ex.image for ex in examples], [ex.prefix for ex in examples], suffixes)


def forward(
    model: PaliGemmaForConditionalGeneration, batch: ProcessorBatch, labels: torch.Tensor | None = None
) -> PaliGemmaOutput:
    """The model on a processor batch; with `labels`, the output's loss is the next-token loss on them."""
    return model(
        batch.input_ids,
        pixel_values=batch.pixel_values,
        attention_mask=batch.attention_mask,
        token_type_ids=batch.token_type_ids,
        labels=labels,
    )


def answer_loss(model: PaliGemmaForConditionalGeneration, batch: ProcessorBatch) -> torch.Tensor:
    """The next-token loss on the answers, the mean over the batch's answer tokens.

    On several ranks, `batch` is this rank's slice and the result its share of the global batch's
    mean (`distributed.global_mean`): the slices hold different numbers of answer tokens.
    """
    loss = forward(model, batch, labels=batch.labels).loss
    return distributed.global_mean(loss, (batch.labels[:, 1:] != IGNORE_INDEX).sum())


def patch_labels(examples: list[Example], world: WorldConfig, patch: int) -> tuple[torch.Tensor, ...]:
    """Per-patch targets: the colour and kind of the shape covering most of a patch, and its box.

    A patch counts as part of a shape when the shape covers at least 1/8 of it: with large
    patches a small shape may cover no patch by a majority, and would otherwise get no label.

    Returns:
        colour: int[B, P] and kind: int[B, P], the index in `world.colours` / `world.kinds`
        plus 1, 0 for background; box: float[B, P, 4], the covering shape's (y_min, x_min,
        y_max, x_max) as fractions of the image side, zeros on background patches.
    """
    colours, kinds, boxes = [], [], []
    for ex in examples:
        shapes, size = ex.scene.shapes, ex.scene.size
        pixels = np.asarray(ex.image).astype(int)  # (I, I, C)
        owner = np.zeros((size, size), dtype=np.int64)  # (I, I): shape index + 1, 0 for background
        for i, shape in enumerate(shapes):
            owner[(pixels == np.array(shape.rgb)).all(-1)] = i + 1
        side = size // patch
        votes = owner.reshape(side, patch, side, patch).transpose(0, 2, 1, 3).reshape(side * side, -1)
        cover = (votes[..., None] == np.arange(1, len(shapes) + 1)).sum(1)  # (P, shapes): pixels of each
        major = np.where(cover.max(-1) * 8 >= patch * patch, cover.argmax(-1) + 1, 0)  # (P,)
        colours.append(np.array([0] + [world.colours.index(s.colour) + 1 for s in shapes])[major])
        kinds.append(np.array([0] + [world.kinds.index(s.kind) + 1 for s in shapes])[major])
        boxes.append((np.array([[0] * 4] + [s.box for s in shapes], dtype=np.float32) / size)[major])
    return tuple(torch.from_numpy(np.stack(rows)) for rows in (colours, kinds, boxes))
