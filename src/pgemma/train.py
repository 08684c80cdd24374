"""Training a small PaliGemma on the synthetic world (chapter "Assembling PaliGemma").

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

How the recipe was found (every curve is in ``pgemma/assets/recipe_search.json``):

- captions alone teach the tower *what* is in a scene but not *where*: linear probes on the
  patches of a frozen tower read boxes with an error of 11.7 px after a contrastive-only stage 0,
  no better than from a random tower (10.4 px); after stage 0 with per-patch labels, 1.0 px;
- end to end, with the same stage 1 (5000 steps): caption / colour / count exact match and box
  IoU on held-out scenes were 0.39 / 0.85 / 1.00 / 0.61 with a random tower, 0.44 / 0.85 / 1.00
  / 0.60 after a contrastive-only stage 0, and 0.99 / 1.00 / 1.00 / 0.87 with the patch labels;
- 16 image tokens (patch 16 on 64 px) train 2.5 times faster than 64 and suffice once the
  tower has learned positions;
- with one key/value head (multi-query attention), a 128-wide decoder with head_dim 32 was slow
  to learn: head_dim 64 (and a learning rate of 1e-3 instead of 2e-3, changed together) reached
  in 2000 steps more than the first had in 3000.

Training state (weights, AdamW moments, step, RNG) is one safetensors file with its settings
as JSON metadata, replaced atomically, so a run can be stopped at any moment and resumed.

Run it: ``python -m pgemma.train --out runs/shapes`` (again, the same command, to resume).
"""

import argparse
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from pgemma.checkpoint import load_pretrained, save_pretrained
from pgemma.config import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig
from pgemma.contrastive import INIT_BIAS, INIT_LOG_TEMPERATURE, sigmoid_loss
from pgemma.generate import generate
from pgemma.paligemma import PaliGemmaForConditionalGeneration, PaliGemmaOutput
from pgemma.processor import PaliGemmaProcessor, ProcessorBatch, parse_loc_tokens
from pgemma.tokenizer import NUM_LOC_TOKENS, PaliGemmaTokenizer, train_tokenizer
from pgemma.world import (TASKS, Example, WorldConfig, box_iou, caption, example,
                          split_seeds, text_corpus)

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
        return cls(vision_width=32, vision_layers=1, vision_heads=2, text_width=64, text_layers=1,
                   text_heads=2, head_dim=32)


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
        return cls(world=WorldConfig(min_side=16, max_side=28),
                   model=ModelSize(text_width=128, head_dim=64, patch_size=16),
                   stage0=StageConfig(steps=2000, lr=1e-3, eval_every=500),
                   stage1=StageConfig(steps=5000, lr=1e-3, warmup=200, slow_warmup=1000, eval_every=1000))

    @classmethod
    def tiny(cls) -> "Recipe":
        return cls(world=WorldConfig.tiny(), model=ModelSize.tiny(),
                   stage0=StageConfig(steps=20, batch_size=8, warmup=5, checkpoint_every=10),
                   stage1=StageConfig(steps=40, batch_size=8, warmup=5, checkpoint_every=10))


# ----------------------------------------------------------------------------------------------
# Model, tokenizer, processor


def build_tokenizer(world: WorldConfig, vocab_size: int) -> PaliGemmaTokenizer:
    """A small BPE vocabulary for the world's prompts and answers, with PaliGemma's special tokens."""
    return train_tokenizer(text_corpus(world), vocab_size)


def build_model(size: ModelSize, world: WorldConfig, tokenizer: PaliGemmaTokenizer) -> PaliGemmaForConditionalGeneration:
    """A randomly initialized PaliGemma of `size` for `world.image_size` images."""
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=size.vision_width, intermediate_size=4 * size.vision_width,
            num_hidden_layers=size.vision_layers, num_attention_heads=size.vision_heads,
            image_size=world.image_size, patch_size=size.patch_size),
        text_config=GemmaConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=size.text_width, intermediate_size=4 * size.text_width,
            num_hidden_layers=size.text_layers, num_attention_heads=size.text_heads, num_key_value_heads=1,
            head_dim=size.head_dim, max_position_embeddings=512),
        projection_dim=size.text_width, image_token_index=tokenizer.image_id, pad_token_id=tokenizer.pad_id,
        eos_token_id=tokenizer.eos_id, bos_token_id=tokenizer.bos_id)
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


def build_processor(model: PaliGemmaForConditionalGeneration, tokenizer: PaliGemmaTokenizer) -> PaliGemmaProcessor:
    return PaliGemmaProcessor(tokenizer, model.config.vision_config.image_size, model.num_image_tokens,
                              model.config.text_config.max_position_embeddings)


def process(processor: PaliGemmaProcessor, examples: list[Example], with_answers: bool = True) -> ProcessorBatch:
    """Examples in PaliGemma's prompt format, with labels on the answers when `with_answers`."""
    suffixes = [ex.suffix for ex in examples] if with_answers else None
    return processor([ex.image for ex in examples], [ex.prefix for ex in examples], suffixes)


def forward(model: PaliGemmaForConditionalGeneration, batch: ProcessorBatch,
            labels: torch.Tensor | None = None) -> PaliGemmaOutput:
    return model(batch.input_ids, pixel_values=batch.pixel_values, attention_mask=batch.attention_mask,
                 token_type_ids=batch.token_type_ids, labels=labels)


def init_loc_embeddings(model: PaliGemmaForConditionalGeneration, tokenizer: PaliGemmaTokenizer,
                        seed: int = 0) -> None:
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


# ----------------------------------------------------------------------------------------------
# Stage 0: the vision tower


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

    def embed(self, examples: list[Example], tokenizer: PaliGemmaTokenizer) -> tuple[torch.Tensor, ...]:
        """Patch features float[B, P, Dv], image and caption embeddings float[B, E]."""
        pixels = torch.stack([torch.from_numpy(np.asarray(ex.image, dtype=np.float32)) for ex in examples])
        pixels = pixels.permute(0, 3, 1, 2) / 127.5 - 1  # (B, C, I, I) in [-1, 1], as the processor does
        features = self.tower(pixels)[0]  # (B, P, Dv)
        image_emb = F.normalize(self.image_proj(features.mean(1)), dim=-1)  # (B, E)
        captions = [tokenizer.encode(caption(ex.scene)) for ex in examples]
        ids = torch.full((len(captions), max(map(len, captions))), tokenizer.pad_id)  # (B, T)
        for row, tokens in zip(ids, captions):
            row[:len(tokens)] = torch.tensor(tokens)
        return features, image_emb, self.encode_text(ids, tokenizer.pad_id)

    def loss(self, examples: list[Example], tokenizer: PaliGemmaTokenizer, world: WorldConfig,
             patch: int, patch_label_weight: float) -> torch.Tensor:
        features, image_emb, text_emb = self.embed(examples, tokenizer)
        loss = sigmoid_loss(image_emb, text_emb, self.log_t, self.bias)
        if patch_label_weight:
            colour, kind, box = patch_labels(examples, world, patch)  # (B, P), (B, P), (B, P, 4)
            on_shape = (kind > 0).float()  # (B, P)
            box_error = F.l1_loss(self.box_head(features).sigmoid(), box, reduction="none").sum(-1)  # (B, P)
            loss = loss + patch_label_weight * (
                F.cross_entropy(self.colour_head(features).flatten(0, 1), colour.flatten())
                + F.cross_entropy(self.kind_head(features).flatten(0, 1), kind.flatten())
                + 10 * (box_error * on_shape).sum() / on_shape.sum().clamp(min=1))  # 10: errors are ~0.05
        return loss

    @torch.no_grad()
    def evaluate(self, tokenizer: PaliGemmaTokenizer, world: WorldConfig, patch: int,
                 num_scenes: int = 200) -> dict[str, float]:
        """Held-out image-to-caption retrieval among `num_scenes` (1- and 2-shape scenes apart),
        and how well the patch heads read kinds and boxes (the box error in pixels)."""
        seeds = [seed for _, seed in zip(range(num_scenes), split_seeds("heldout"))]
        examples = [example(seed, world) for seed in seeds]
        features, image_emb, text_emb = self.embed(examples, tokenizer)
        texts = [caption(ex.scene) for ex in examples]  # small worlds repeat captions: compare the text
        hit = torch.tensor([texts[j] == text for j, text in zip((image_emb @ text_emb.T).argmax(1).tolist(), texts)])
        shapes = torch.tensor([len(ex.scene.shapes) for ex in examples])
        _, kind, box = patch_labels(examples, world, patch)
        on_shape = kind > 0
        box_error = (self.box_head(features).sigmoid() - box).abs().mean(-1)[on_shape] * world.image_size
        return {"retrieval_1": hit[shapes == 1].float().mean().item(),
                "retrieval_2": hit[shapes == 2].float().mean().item(),
                "patch_kind": (self.kind_head(features).argmax(-1) == kind).float().mean().item(),
                "box_error_px": box_error.mean().item()}


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    """Write a safetensors file so that `path` always holds a whole file, the old one or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())
        os.replace(tmp, path)  # atomic on POSIX: a reader sees the old file or the new one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_state(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, step: int, info: dict) -> None:
    """Weights, AdamW moments, step and RNG in one safetensors file (no pickle), `info` as JSON."""
    # clone: tied weights share storage, which safetensors refuses to write
    tensors = {f"model.{k}": v.detach().clone() for k, v in module.state_dict().items()}
    opt_state = optimizer.state_dict()
    for index, state in opt_state["state"].items():
        for name, value in state.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).clone()
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {"step": str(step), "param_groups": json.dumps(opt_state["param_groups"]), "info": json.dumps(info)}
    _atomic_save(tensors, metadata, path)


def load_state(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    """Restore what `save_state` wrote into `module` and `optimizer`; returns (step, info)."""
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    module.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    torch.set_rng_state(tensors["rng.torch"])
    return int(metadata["step"]), json.loads(metadata["info"])


# ----------------------------------------------------------------------------------------------
# The training loop, shared by both stages


def lr_at(step: int, cfg: StageConfig, warmup: int | None = None) -> float:
    """Linear warmup (over `warmup` steps, default `cfg.warmup`), then constant, or cosine to 0."""
    warmup = cfg.warmup if warmup is None else warmup
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(module: nn.Module, cfg: StageConfig, slow: nn.Module | None = None) -> torch.optim.AdamW:
    """AdamW, with no weight decay on 1-d parameters (norms, biases, scalars).

    The parameters of `slow` (stage 1: the pretrained vision tower) warm up over
    `cfg.slow_warmup` steps, so the first gradients of a random decoder do not wreck them.
    """
    slow_ids = {id(p) for p in slow.parameters()} if slow is not None else set()
    groups = []
    for warmup, is_slow in ((cfg.warmup, False), (max(cfg.warmup, cfg.slow_warmup), True)):
        params = [p for p in module.parameters() if p.requires_grad and (id(p) in slow_ids) == is_slow]
        groups += [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay, "warmup": warmup},
                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "warmup": warmup}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))


def train_loop(name: str, module: nn.Module, loss_fn: Callable[[int], torch.Tensor], cfg: StageConfig,
               checkpoint: Path, on_eval: Callable[[], dict] | None = None, slow: nn.Module | None = None) -> list[dict]:
    """Run `cfg.steps` AdamW steps on `loss_fn(step)`, resuming from `checkpoint` if it exists.

    `loss_fn` draws its batch from the step number alone, so a resumed run sees the same data.
    Returns the evaluation curve: a list of {"step": ..., **on_eval()} (kept in the checkpoint).
    """
    torch.manual_seed(cfg.seed)
    optimizer = make_optimizer(module, cfg, slow)
    step, curve = 0, []
    if checkpoint.exists():
        step, info = load_state(checkpoint, module, optimizer)
        curve = info["curve"]
    module.train()
    bar = tqdm(range(step, cfg.steps), initial=step, total=cfg.steps, desc=name)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg, group["warmup"])
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if on_eval and cfg.eval_every and done % cfg.eval_every == 0:
            module.eval()
            curve.append({"step": done, **on_eval()})
            module.train()
            bar.write(f"{name} step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in curve[-1].items() if k != "step"))
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_state(checkpoint, module, optimizer, done, {"curve": curve})
    return curve


def training_examples(step: int, world: WorldConfig, cfg: StageConfig, stage: int) -> list[Example]:
    """The batch of a step. Each stage reads its own run of training seeds."""
    start = stage * 100_000_000 + step * cfg.batch_size
    return [example(seed, world) for seed in range(start, start + cfg.batch_size)]


def pretrain_vision(model: PaliGemmaForConditionalGeneration, tokenizer: PaliGemmaTokenizer, recipe: Recipe,
                    checkpoint: Path) -> list[dict]:
    """Stage 0: the sigmoid loss on image-caption pairs, plus per-patch labels, for the tower only."""
    pretrainer = TowerPretrainer(model.vision_tower, recipe.world, tokenizer.vocab_size,
                                 model.config.vision_config.hidden_size)

    def loss_fn(step: int) -> torch.Tensor:
        examples = training_examples(step, recipe.world, recipe.stage0, stage=0)
        return pretrainer.loss(examples, tokenizer, recipe.world, recipe.model.patch_size, recipe.patch_label_weight)

    def on_eval() -> dict[str, float]:
        return pretrainer.evaluate(tokenizer, recipe.world, recipe.model.patch_size)

    return train_loop("stage 0", pretrainer, loss_fn, recipe.stage0, checkpoint, on_eval)


def train_prefix_lm(model: PaliGemmaForConditionalGeneration, processor: PaliGemmaProcessor, recipe: Recipe,
                    checkpoint: Path, on_eval: Callable[[], dict] | None = None) -> list[dict]:
    """Stage 1: the whole model on all tasks at once, next-token loss on the suffix only."""

    def loss_fn(step: int) -> torch.Tensor:
        batch = process(processor, training_examples(step, recipe.world, recipe.stage1, stage=1))
        return forward(model, batch, labels=batch.labels).loss

    return train_loop("stage 1", model, loss_fn, recipe.stage1, checkpoint, on_eval, slow=model.vision_tower)


# ----------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(model: PaliGemmaForConditionalGeneration, processor: PaliGemmaProcessor, world: WorldConfig,
             num_scenes: int = 300, batch_size: int = 50, generate_boxes: bool = True) -> dict[str, float]:
    """Per-task exact match on held-out scenes (every task on each scene), and detection mean IoU.

    Exact match uses teacher forcing: a greedy answer equals the target exactly when the argmax
    at every answer position, <eos> included, is the target token, so this is the number
    generation would give, for one forward pass. Boxes come from greedy generation with the KV
    cache (or, with
    `generate_boxes=False`, from the teacher-forced argmax: cheaper, a little optimistic).
    An object that the answer does not name counts as IoU 0.
    """
    was_training = model.training
    model.eval()
    seeds = [seed for _, seed in zip(range(num_scenes), split_seeds("heldout"))]
    correct = dict.fromkeys(TASKS, 0)
    ious = []
    for task in TASKS:
        for start in range(0, num_scenes, batch_size):
            examples = [example(seed, world, task=task) for seed in seeds[start:start + batch_size]]
            batch = process(processor, examples)
            predicted = forward(model, batch).logits[:, :-1].argmax(-1)  # (B, T - 1): token t + 1
            targets = batch.labels[:, 1:]
            scored = targets != -100
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


# ----------------------------------------------------------------------------------------------
# The whole recipe


def run(recipe: Recipe, out: Path, eval_scenes: int = 300, curve_scenes: int = 100) -> dict[str, float]:
    """Both stages, resumable from `out`; writes curves.json there and returns the final evaluation."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.stage0.seed)
    tokenizer = build_tokenizer(recipe.world, recipe.model.vocab_size)
    model = build_model(recipe.model, recipe.world, tokenizer)
    processor = build_processor(model, tokenizer)
    if recipe.smooth_loc_init:
        init_loc_embeddings(model, tokenizer)
    (out / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
    curves = {}
    if recipe.stage0.steps:
        curves["stage0"] = pretrain_vision(model, tokenizer, recipe, out / "stage0.safetensors")
    curves["stage1"] = train_prefix_lm(
        model, processor, recipe, out / "stage1.safetensors",
        on_eval=lambda: evaluate(model, processor, recipe.world, curve_scenes, generate_boxes=False))
    final = evaluate(model, processor, recipe.world, eval_scenes)
    export(model, tokenizer, out / "model")
    (out / "curves.json").write_text(json.dumps({"recipe": asdict(recipe), **curves, "final": final}, indent=2))
    return final


SHIPPED_MODEL = "shapes"  # the folder under pgemma/assets holding the trained model


def shipped_model_folder() -> Path:
    """The checkpoint folder of the model trained by `Recipe.shipped()` that ships with pgemma.

    Note: the package must be installed as files (as pip does), not imported from a zip.
    """
    return Path(str(resources.files("pgemma.assets").joinpath(SHIPPED_MODEL)))


def load_shipped_model() -> tuple[PaliGemmaForConditionalGeneration, PaliGemmaProcessor]:
    """The shipped model (in eval mode) and its processor."""
    return load_pretrained(shipped_model_folder())


def export(model: PaliGemmaForConditionalGeneration, tokenizer: PaliGemmaTokenizer, folder: Path) -> None:
    """Write a checkpoint folder in the hub layout (pgemma and transformers both load it)."""
    save_pretrained(model, folder)
    tokenizer.save_pretrained(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pgemma.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, curves.json, model/")
    parser.add_argument("--recipe", choices=["shipped", "tiny"], default="shipped")
    parser.add_argument("--eval-scenes", type=int, default=300, help="held-out scenes for the final evaluation")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe.shipped() if args.recipe == "shipped" else Recipe.tiny()
    final = run(recipe, args.out, args.eval_scenes)
    print(f"held-out scenes: {args.eval_scenes}")
    for name, value in final.items():
        print(f"  {name:14s} {value:.3f}")
    print(f"model written to {args.out / 'model'}")


if __name__ == "__main__":
    main()
