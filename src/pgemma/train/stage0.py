"""Stage 0: the vision tower alone, on image-caption pairs and per-patch labels.

Book chapter: "Assembling PaliGemma". PaliGemma's stage 0 trains SigLIP contrastively with the
sigmoid loss (Beyer et al. 2024, section 3.2.1); we add per-patch labels, which a generated world
gives for free and which teach the tower *where* things are (see `pgemma.train.recipe`).
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pgemma.contrastive import INIT_BIAS, INIT_LOG_TEMPERATURE, ring_sigmoid_loss, sigmoid_loss
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.processor import PaliGemmaProcessor
from pgemma.train import distributed
from pgemma.train.data import patch_labels, training_examples
from pgemma.train.loop import train_loop
from pgemma.train.recipe import Recipe
from pgemma.world import Example, WorldConfig, caption, example, split_seeds


class TowerPretrainer(nn.Module):
    """The vision tower plus what stage 0 needs around it: a caption encoder and per-patch heads.

    Only the tower is kept after stage 0. Images are pooled by a mean over patches (SigLIP uses
    an attention-pooling head, which PaliGemma drops anyway).
    """

    def __init__(self, tower: nn.Module, world: WorldConfig, vocab_size: int, width: int, embed_dim: int = 128):
        super().__init__()
        self.tower = tower
        self.image_proj = nn.Linear(width, embed_dim)
        self.text_embed = nn.Embedding(vocab_size, embed_dim)
        self.text_pos = nn.Parameter(torch.randn(32, embed_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(embed_dim, 4, 4 * embed_dim, dropout=0.0, batch_first=True)
        self.text_encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.log_t = nn.Parameter(torch.tensor(INIT_LOG_TEMPERATURE))
        self.bias = nn.Parameter(torch.tensor(INIT_BIAS))
        self.colour_head = nn.Linear(width, len(world.colours) + 1)
        self.kind_head = nn.Linear(width, len(world.kinds) + 1)
        self.box_head = nn.Linear(width, 4)

    def encode_text(self, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
        """int[B, T] right-padded caption ids -> float[B, E], L2-normalized."""
        keep = ids != pad_id  # (B, T)
        x = self.text_embed(ids) + self.text_pos[: ids.shape[1]]  # (B, T, E)
        x = self.text_encoder(x, src_key_padding_mask=~keep)
        x = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)  # (B, E), mean over real tokens
        return F.normalize(x, dim=-1)

    def patch_features(self, examples: list[Example], processor: PaliGemmaProcessor) -> torch.Tensor:
        """The tower's patch vectors float[B, P, Dv] for the examples' images.

        The pixels are the processor's, so the tower learns on exactly what stage 1 will feed it.
        """
        pixels = torch.stack([processor.preprocess_image(ex.image) for ex in examples])  # (B, C, I, I)
        return self.tower(pixels)[0]

    def embed(self, examples: list[Example], processor: PaliGemmaProcessor) -> tuple[torch.Tensor, ...]:
        """Patch features float[B, P, Dv], image and caption embeddings float[B, E]."""
        features = self.patch_features(examples, processor)  # (B, P, Dv)
        image_emb = F.normalize(self.image_proj(features.mean(1)), dim=-1)  # (B, E)
        tokenizer = processor.tokenizer
        captions = [tokenizer.encode(caption(ex.scene)) for ex in examples]
        ids = torch.full((len(captions), max(map(len, captions))), tokenizer.pad_id)  # (B, T)
        for row, tokens in zip(ids, captions):
            row[: len(tokens)] = torch.tensor(tokens)
        return features, image_emb, self.encode_text(ids, tokenizer.pad_id)

    def loss(
        self,
        examples: list[Example],
        processor: PaliGemmaProcessor,
        world: WorldConfig,
        patch: int,
        patch_label_weight: float,
    ) -> torch.Tensor:
        """The stage's loss on `examples`; on several ranks, this rank's share (see `train_loop`)."""
        features, image_emb, text_emb = self.embed(examples, processor)
        if distributed.world_size() == 1:
            loss = sigmoid_loss(image_emb, text_emb, self.log_t, self.bias)
        else:  # the ranks' shares add up to the whole batch's loss: times D, their mean does
            loss = ring_sigmoid_loss(image_emb, text_emb, self.log_t, self.bias) * distributed.world_size()
        if patch_label_weight:
            loss = loss + patch_label_weight * self.patch_label_loss(features, examples, world, patch)
        return loss

    def patch_label_loss(
        self, features: torch.Tensor, examples: list[Example], world: WorldConfig, patch: int
    ) -> torch.Tensor:
        """The per-patch heads' loss on patch features float[B, P, Dv]: colour, kind, and the box
        of the shape covering each patch (on several ranks, this rank's share)."""
        colour, kind, box = patch_labels(examples, world, patch)  # (B, P), (B, P), (B, P, 4)
        on_shape = (kind > 0).float()  # (B, P)
        box_error = F.l1_loss(self.box_head(features).sigmoid(), box, reduction="none").sum(-1)  # (B, P)
        box_loss = 10 * (box_error * on_shape).sum() / on_shape.sum().clamp(min=1)  # 10: errors are ~0.05
        return (
            F.cross_entropy(self.colour_head(features).flatten(0, 1), colour.flatten())
            + F.cross_entropy(self.kind_head(features).flatten(0, 1), kind.flatten())
            + distributed.global_mean(box_loss, on_shape.sum())  # slices cover different numbers of patches
        )

    @torch.no_grad()
    def evaluate(
        self, processor: PaliGemmaProcessor, world: WorldConfig, patch: int, num_scenes: int = 200
    ) -> dict[str, float]:
        """Held-out image-to-caption retrieval among `num_scenes` (1- and 2-shape scenes apart),
        and how well the patch heads read kinds and boxes (the box error in pixels)."""
        seeds = [seed for _, seed in zip(range(num_scenes), split_seeds("heldout"))]
        examples = [example(seed, world) for seed in seeds]
        features, image_emb, text_emb = self.embed(examples, processor)
        texts = [caption(ex.scene) for ex in examples]  # small worlds repeat captions: compare the text
        hit = torch.tensor([texts[j] == text for j, text in zip((image_emb @ text_emb.T).argmax(1).tolist(), texts)])
        shapes = torch.tensor([len(ex.scene.shapes) for ex in examples])
        return {
            "retrieval_1": hit[shapes == 1].float().mean().item(),
            "retrieval_2": hit[shapes == 2].float().mean().item(),
            **self.read_patches(features, examples, world, patch),
        }

    @torch.no_grad()
    def read_patches(
        self, features: torch.Tensor, examples: list[Example], world: WorldConfig, patch: int
    ) -> dict[str, float]:
        """How well the patch heads read patch features float[B, P, Dv]: the kind of shape on each
        patch (background included), and the box of the covering shape (mean error in pixels)."""
        _, kind, box = patch_labels(examples, world, patch)
        on_shape = kind > 0
        box_error = (self.box_head(features).sigmoid() - box).abs().mean(-1)[on_shape] * world.image_size
        return {
            "patch_kind": (self.kind_head(features).argmax(-1) == kind).float().mean().item(),
            "box_error_px": box_error.mean().item(),
        }


def pretrain_vision(
    model: PaliGemmaForConditionalGeneration, processor: PaliGemmaProcessor, recipe: Recipe, checkpoint: Path
) -> list[dict]:
    """Stage 0: the sigmoid loss on image-caption pairs, plus per-patch labels, for the tower only."""
    pretrainer = TowerPretrainer(
        model.vision_tower, recipe.world, processor.tokenizer.vocab_size, model.config.vision_config.hidden_size
    )

    def loss_fn(step: int) -> torch.Tensor:
        examples = training_examples(step, recipe.world, recipe.stage0, stage=0)
        return pretrainer.loss(examples, processor, recipe.world, recipe.model.patch_size, recipe.patch_label_weight)

    def on_eval() -> dict[str, float]:
        return pretrainer.evaluate(processor, recipe.world, recipe.model.patch_size)

    return train_loop("stage 0", pretrainer, loss_fn, recipe.stage0, checkpoint, on_eval)
