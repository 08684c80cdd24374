"""Stage 1: the whole model on every task at once, the loss on the answers only (prefix-LM).

Book chapter: "Assembling PaliGemma". PaliGemma's multimodal pretraining (Beyer et al. 2024,
section 3.2.2): the image and the prompt are the prefix, attended both ways; the answer is the
suffix, and only its tokens carry a label. The vision tower, pretrained in stage 0, warms up more
slowly than the random decoder (`StageConfig.slow_warmup`).
"""

from collections.abc import Callable
from pathlib import Path

import torch

from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.processor import PaliGemmaProcessor
from pgemma.train.data import answer_loss, process, training_examples
from pgemma.train.loop import train_loop
from pgemma.train.recipe import Recipe


def train_prefix_lm(
    model: PaliGemmaForConditionalGeneration,
    processor: PaliGemmaProcessor,
    recipe: Recipe,
    checkpoint: Path,
    on_eval: Callable[[], dict] | None = None,
) -> list[dict]:
    """Stage 1: the whole model on all tasks at once, next-token loss on the suffix only."""

    def loss_fn(step: int) -> torch.Tensor:
        batch = process(processor, training_examples(step, recipe.world, recipe.stage1, stage=1))
        return answer_loss(model, batch)

    return train_loop("stage 1", model, loss_fn, recipe.stage1, checkpoint, on_eval, slow=model.vision_tower)
