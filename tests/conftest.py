"""Shared fixtures: tiny configs, random reference checkpoints built offline, and input batches."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pgemma.config import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig
from pgemma.gemma import GemmaForCausalLM
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from tools.book import ROOT

# Multi-query (the real model's structure), grouped-query and multi-head attention, with different
# image and patch sizes, and widths whose square root is not a power of two (so that scaling by
# sqrt(D) rounds).
CONFIGS = {
    "multi_query": PaliGemmaConfig.tiny(),
    "grouped_query": PaliGemmaConfig(
        vision_config=SiglipVisionConfig(hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                                         num_attention_heads=3, image_size=28, patch_size=7),
        text_config=GemmaConfig(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                                max_position_embeddings=64),
        projection_dim=48, image_token_index=257),
    "multi_head": PaliGemmaConfig(
        vision_config=SiglipVisionConfig(hidden_size=40, intermediate_size=72, num_hidden_layers=1,
                                         num_attention_heads=5, image_size=30, patch_size=6),
        text_config=GemmaConfig(vocab_size=128, hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                                num_attention_heads=3, num_key_value_heads=3, head_dim=20,
                                max_position_embeddings=96),
        projection_dim=96, image_token_index=100),
}


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """name -> directory of a random transformers checkpoint for CONFIGS[name] (built once)."""
    pytest.importorskip("transformers")
    from pgemma.reference import build_reference_checkpoint

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = tmp_path_factory.mktemp(f"reference_{name}")
            build_reference_checkpoint(built[name], CONFIGS[name], seed=len(built))
        return built[name]

    return get


@pytest.fixture(scope="session")
def reference_model(reference_checkpoint: Callable[[str], Path]) -> Callable[[str], object]:
    """name -> transformers' model (eager attention, float32) loaded from the reference checkpoint."""
    from pgemma.reference import load_reference_model

    loaded: dict[str, object] = {}

    def get(name: str) -> object:
        if name not in loaded:
            loaded[name] = load_reference_model(reference_checkpoint(name))
        return loaded[name]

    return get


def make_inputs(
    config: PaliGemmaConfig, seed: int = 0, padding: tuple[int, ...] = (0, 3), prefix: int = 5, suffix: int = 3
) -> dict[str, torch.Tensor]:
    """A left-padded batch as the processor makes it: <image> * P + BOS + prefix, then a suffix.

    Row b has ``padding[b]`` pad tokens on the left (and a shorter prefix). Returns input_ids,
    pixel_values, attention_mask, token_type_ids (0 = image + prefix, 1 = suffix) and labels
    (-100 except on the suffix).
    """
    generator = torch.Generator().manual_seed(seed)
    vocab, image_token = config.text_config.vocab_size, config.image_token_index
    rows, masks, types = [], [], []
    for pad in padding:
        text = torch.randint(3, vocab, (prefix - pad + suffix,), generator=generator)
        text[text == image_token] = 3  # text never contains the image token
        row = torch.cat([torch.zeros(pad, dtype=torch.long), torch.full((config.num_image_tokens,), image_token),
                         torch.tensor([config.bos_token_id]), text])
        rows.append(row)
        masks.append((torch.arange(len(row)) >= pad).long())
        types.append((torch.arange(len(row)) >= len(row) - suffix).long())
    input_ids, token_type_ids = torch.stack(rows), torch.stack(types)
    vision = config.vision_config
    pixel_values = torch.rand(len(padding), vision.num_channels, vision.image_size, vision.image_size,
                              generator=generator) * 2 - 1
    labels = input_ids.masked_fill(token_type_ids == 0, -100)
    return {"input_ids": input_ids, "pixel_values": pixel_values, "attention_mask": torch.stack(masks),
            "token_type_ids": token_type_ids, "labels": labels}


def random_model(config: PaliGemmaConfig, seed: int = 0, use_sdpa: bool = False) -> PaliGemmaForConditionalGeneration:
    """A pgemma model with every parameter random (norm weights too), no reference needed."""
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config, use_sdpa)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def built_book() -> Path:
    """Build the book once per test session (warnings are errors) into _build/html."""
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run([str(jupyter_book), "build", str(ROOT), "-W", "--keep-going"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, f"jupyter-book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return ROOT / "_build" / "html"


def random_decoder(config: GemmaConfig, seed: int = 0) -> GemmaForCausalLM:
    """A Gemma decoder with weights drawn from N(0, 0.1), large enough to make every layer matter."""
    torch.manual_seed(seed)
    model = GemmaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.1)
    return model.eval()
