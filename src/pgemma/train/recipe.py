"""The training recipe: its settings, the tokenizer and the model it starts from.

Book chapter: "Assembling PaliGemma".

PaliGemma was trained in stages (Beyer et al. 2024, section 3.2):

- stage 0, unimodal pretraining: the SigLIP image encoder is trained contrastively on
  image-text pairs with the sigmoid loss (and the Gemma decoder as a language model);
- stage 1, multimodal pretraining: the whole model, image encoder included, learns a broad
  mixture of tasks with the prefix-LM objective, the loss on the answer (suffix) only.

We do the same at toy scale. Stage 0 trains the vision tower with the sigmoid loss on
image-caption pairs and, because a generated world gives them for free, per-patch labels
(which colour and which kind of shape covers each patch, and that shape's box): those teach the
tower *where* things are, which captions alone barely do. Stage 1 trains everything on all four
tasks of `pgemma.world` at once.

How the recipe was found: `pgemma.train.search` (``python -m pgemma.train search``) trains it
against variants that each change one setting, and probes the vision tower each run's stage 1
started from with fresh linear heads. Its record, ``pgemma/assets/recipe_search.json``, shown in
the chapter, says:

- captions alone teach the tower *what* is in a scene but not *where*: a linear probe reads boxes
  from a tower pretrained on captions alone no better than from a random tower, and about ten
  times better from one pretrained with the per-patch labels;
- stage 1 does not make up for it: with the same stage 1, the random tower and the captions-only
  one end far behind on captions, colours and boxes (counting is easy for all three);
- with one key/value head (multi-query attention), decoder heads half as wide (32 instead of 64)
  start slower and end a little behind, by about as much as two runs of the same stage 0 differ.

`Recipe.shipped()` holds the settings of the model that ships with pgemma (`pgemma.shipped`),
`Recipe.tiny()` a recipe small enough for the tests.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from pgemma.config import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig
from pgemma.loc_tokens import NUM_LOC_TOKENS
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.shipped import SHIPPED_WORLD
from pgemma.tokenizer import PaliGemmaTokenizer, train_tokenizer
from pgemma.world import WorldConfig, text_corpus

# ----------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class ModelSize:
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    patch_size: int = 8
    text_width: int = 256
    text_layers: int = 4
    text_heads: int = 4
    head_dim: int = 64
    vocab_size: int = 1200  # 1029 reserved tokens (<pad> .. <loc1023>), ~100 characters, merges

    @classmethod
    def tiny(cls) -> "ModelSize":
        return cls(
            vision_width=32, vision_layers=1, vision_heads=2, text_width=64, text_layers=1, text_heads=2, head_dim=32
        )


@dataclass(frozen=True)
class StageConfig:
    steps: int
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    schedule: str = "cosine"  # or "constant" after the warmup
    weight_decay: float = 0.01
    slow_warmup: int = 0  # stage 1: the pretrained vision tower's longer warmup (PaliGemma, section 3.2.2)
    checkpoint_every: int = 100
    eval_every: int = 0  # 0: no evaluation during the stage
    seed: int = 0

    def __post_init__(self):
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")


@dataclass(frozen=True)
class Recipe:
    world: WorldConfig = WorldConfig()
    model: ModelSize = ModelSize()
    stage0: StageConfig = StageConfig(steps=1000)
    stage1: StageConfig = StageConfig(steps=6000)
    patch_label_weight: float = 1.0  # stage 0: per-patch colour, kind and box losses (0: captions only)
    smooth_loc_init: bool = True  # neighbouring <loc> bins start with similar embeddings

    @classmethod
    def shipped(cls) -> "Recipe":
        """The recipe of the model that ships with pgemma (see the chapter for how it was found)."""
        return cls(
            world=SHIPPED_WORLD,
            model=ModelSize(text_width=128, head_dim=64, patch_size=16),
            stage0=StageConfig(steps=2000, lr=1e-3, eval_every=500),
            stage1=StageConfig(steps=5000, lr=1e-3, warmup=200, slow_warmup=1000, eval_every=1000),
        )

    @classmethod
    def tiny(cls) -> "Recipe":
        return cls(
            world=WorldConfig.tiny(),
            model=ModelSize.tiny(),
            stage0=StageConfig(steps=20, batch_size=8, warmup=5, checkpoint_every=10),
            stage1=StageConfig(steps=40, batch_size=8, warmup=5, checkpoint_every=10),
        )


# ----------------------------------------------------------------------------------------------
# Tokenizer and model


def build_tokenizer(world: WorldConfig, vocab_size: int) -> PaliGemmaTokenizer:
    """A small BPE vocabulary for the world's prompts and answers, with PaliGemma's special tokens."""
    return train_tokenizer(text_corpus(world), vocab_size)


def build_model(
    size: ModelSize, world: WorldConfig, tokenizer: PaliGemmaTokenizer
) -> PaliGemmaForConditionalGeneration:
    """A randomly initialized PaliGemma of `size` for `world.image_size` images."""
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=size.vision_width,
            intermediate_size=4 * size.vision_width,
            num_hidden_layers=size.vision_layers,
            num_attention_heads=size.vision_heads,
            image_size=world.image_size,
            patch_size=size.patch_size,
        ),
        text_config=GemmaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=size.text_width,
            intermediate_size=4 * size.text_width,
            num_hidden_layers=size.text_layers,
            num_attention_heads=size.text_heads,
            num_key_value_heads=1,
            head_dim=size.head_dim,
            max_position_embeddings=512,
        ),
        projection_dim=size.text_width,
        image_token_index=tokenizer.image_id,
        pad_token_id=tokenizer.pad_id,
        eos_token_id=tokenizer.eos_id,
        bos_token_id=tokenizer.bos_id,
    )
    model = PaliGemmaForConditionalGeneration(config, use_sdpa=True)
    init_weights(model)
    return model


def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """Normal(0, 0.02) weights and zero biases for every linear, convolution and embedding.

    transformers' PaliGemma initializes this way (`initializer_range=0.02`). PyTorch's defaults
    would give the embedding std 1, and the tied output head, after Gemma's sqrt(D) input
    scaling, logits of dozens of units: a first loss near 60 instead of log(V) ~ 7.
    Norms keep their own initialization (RMSNorm's stored weight is the offset from 1: zero).
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
            nn.init.zeros_(module.bias)


def init_loc_embeddings(model: PaliGemmaForConditionalGeneration, tokenizer: PaliGemmaTokenizer, seed: int = 0) -> None:
    """Give <loc0000>..<loc1023> embeddings that vary smoothly with the bin.

    Each bin b gets sin/cos features of b at periods from 1024 bins down to 16 (one pixel of a
    64 px image), mixed into the model width by a fixed random matrix. The output head is tied
    to the embedding, so a model that is almost right about a coordinate puts its probability
    on nearby bins from the start, instead of on 1024 unrelated tokens.
    """
    table = model.language_model.model.embed_tokens.weight  # (V, D)
    ids = torch.tensor([tokenizer.token_to_id(f"<loc{b:04d}>") for b in range(NUM_LOC_TOKENS)])
    bins = torch.arange(NUM_LOC_TOKENS, dtype=torch.float32)[:, None] / NUM_LOC_TOKENS  # (1024, 1)
    angles = 2 * math.pi * bins * 2.0 ** torch.arange(7)  # (1024, 7): 1 .. 64 cycles per side
    features = torch.cat([angles.sin(), angles.cos()], dim=1)  # (1024, 14)
    mix = torch.randn(features.shape[1], table.shape[1], generator=torch.Generator().manual_seed(seed))
    smooth = features @ mix  # (1024, D)
    with torch.no_grad():
        table[ids] = smooth * (table.std() / smooth.std())
