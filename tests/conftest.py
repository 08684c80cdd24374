"""Shared fixtures: tiny configs, random models and input batches, small trained tokenizers, and checkpoints
built offline.

A test that takes ``config_name`` (or ``config``, the config it names) runs once per entry of CONFIGS, with the
name as its id (``test_x[multi_query]``); a test about one particular config takes ``configs`` and picks it.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from pgemma.config import (
    FULL_ATTENTION,
    SLIDING_ATTENTION,
    Gemma2Config,
    GemmaConfig,
    PaliGemmaConfig,
    SiglipVisionConfig,
)
from pgemma.gemma import GemmaForCausalLM
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.tokenizer import BOS, EOS, IMAGE, LOC_TOKENS, PAD, UNK, PaliGemmaTokenizer, train_tokenizer
from pgemma.train.pipeline import export
from pgemma.train.recipe import Recipe, build_model, build_tokenizer
from tools.book import ROOT

# Multi-query (the real model's structure), grouped-query and multi-head attention, with different
# image and patch sizes, and widths whose square root is not a power of two (so that scaling by
# sqrt(D) rounds).
CONFIGS = {
    "multi_query": PaliGemmaConfig.tiny(),
    "grouped_query": PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=24,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=3,
            image_size=28,
            patch_size=7,
        ),
        text_config=GemmaConfig(
            vocab_size=300,
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=12,
            max_position_embeddings=64,
        ),
        projection_dim=48,
        image_token_index=257,
    ),
    "multi_head": PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=40,
            intermediate_size=72,
            num_hidden_layers=1,
            num_attention_heads=5,
            image_size=30,
            patch_size=6,
        ),
        text_config=GemmaConfig(
            vocab_size=128,
            hidden_size=96,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=3,
            num_key_value_heads=3,
            head_dim=20,
            max_position_embeddings=96,
        ),
        projection_dim=96,
        image_token_index=100,
    ),
}

# PaliGemma 2 (a Gemma 2 decoder), kept apart from CONFIGS so that PaliGemma 1's tests run unchanged:
# windows of 4 and 3 tokens, far shorter than any prompt, soft-capping on and (for attention) off,
# transformers' alternating layer types and another order.
PALIGEMMA2_CONFIGS = {
    "gemma2_multi_query": replace(CONFIGS["multi_query"], text_config=Gemma2Config.tiny()),
    "gemma2_grouped_query": replace(
        CONFIGS["grouped_query"],
        text_config=Gemma2Config(
            **{name: getattr(CONFIGS["grouped_query"].text_config, name) for name in GemmaConfig.__dataclass_fields__},
            query_pre_attn_scalar=10,
            attn_logit_softcapping=None,  # SDPA can run these layers
            final_logit_softcapping=5.0,
            sliding_window=3,
            layer_types=(FULL_ATTENTION, SLIDING_ATTENTION, SLIDING_ATTENTION),
        ),
    ),
    # Multi-head attention and a window longer than every test sequence: sliding layers see it all.
    "gemma2_wide_window": replace(
        CONFIGS["multi_head"],
        text_config=Gemma2Config(
            **{name: getattr(CONFIGS["multi_head"].text_config, name) for name in GemmaConfig.__dataclass_fields__},
            query_pre_attn_scalar=16,
            attn_logit_softcapping=20.0,
            final_logit_softcapping=10.0,
            sliding_window=80,
            layer_types=(SLIDING_ATTENTION, FULL_ATTENTION),
        ),
    ),
}

# The text the small tokenizers are trained on: prompts, answers, <loc> tokens and plain sentences.
CORPUS = [
    "caption en a red cat sitting on a wooden bench",
    "answer en what color is the cat?\nred",
    "detect cat ; dog\n<loc0010><loc0020><loc0500><loc0600> cat ; <loc0001><loc0002><loc0003><loc0004> dog",
    "the quick brown fox jumps over the lazy dog",
    "two small dogs play with a blue ball in the park",
] * 10


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that takes ``config_name`` (directly or through ``config``) once per entry of CONFIGS."""
    if "config_name" in metafunc.fixturenames:
        metafunc.parametrize("config_name", sorted(CONFIGS))


@pytest.fixture(scope="session")
def configs() -> dict[str, PaliGemmaConfig]:
    """CONFIGS: name -> tiny PaliGemmaConfig, for a test about one particular config."""
    return CONFIGS


@pytest.fixture
def config(config_name: str) -> PaliGemmaConfig:
    """The config the test's ``config_name`` parameter names."""
    return CONFIGS[config_name]


@pytest.fixture(scope="session")
def paligemma2_configs() -> dict[str, PaliGemmaConfig]:
    """PALIGEMMA2_CONFIGS: name -> tiny PaliGemma 2 config (also names for ``reference_checkpoint``)."""
    return PALIGEMMA2_CONFIGS


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """name -> directory of a random transformers checkpoint for CONFIGS[name] or PALIGEMMA2_CONFIGS[name]
    (built once)."""
    pytest.importorskip("transformers")
    from pgemma.reference import build_reference_checkpoint

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = tmp_path_factory.mktemp(f"reference_{name}")
            if name in PALIGEMMA2_CONFIGS:  # weights large enough for the soft-caps to matter
                build_reference_checkpoint(built[name], PALIGEMMA2_CONFIGS[name], seed=len(built), weight_std=0.1)
            else:
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


@pytest.fixture(scope="session")
def make_inputs() -> Callable[..., dict[str, torch.Tensor]]:
    """(config, seed=0, padding=(0, 3), prefix=5, suffix=3) -> a batch of inputs, see below."""

    def make(
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
            row = torch.cat(
                [
                    torch.zeros(pad, dtype=torch.long),
                    torch.full((config.num_image_tokens,), image_token),
                    torch.tensor([config.bos_token_id]),
                    text,
                ]
            )
            rows.append(row)
            masks.append((torch.arange(len(row)) >= pad).long())
            types.append((torch.arange(len(row)) >= len(row) - suffix).long())
        input_ids, token_type_ids = torch.stack(rows), torch.stack(types)
        vision = config.vision_config
        pixel_values = (
            torch.rand(len(padding), vision.num_channels, vision.image_size, vision.image_size, generator=generator) * 2
            - 1
        )
        labels = input_ids.masked_fill(token_type_ids == 0, -100)
        return {
            "input_ids": input_ids,
            "pixel_values": pixel_values,
            "attention_mask": torch.stack(masks),
            "token_type_ids": token_type_ids,
            "labels": labels,
        }

    return make


def _randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Draw every parameter (norm weights too) from N(0, 0.1), large enough to make every layer matter."""
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def random_model() -> Callable[..., PaliGemmaForConditionalGeneration]:
    """(config, seed=0, use_sdpa=False) -> a pgemma model with every parameter random, no reference needed."""

    def make(config: PaliGemmaConfig, seed: int = 0, use_sdpa: bool = False) -> PaliGemmaForConditionalGeneration:
        torch.manual_seed(seed)
        return _randomized(PaliGemmaForConditionalGeneration(config, use_sdpa))

    return make


@pytest.fixture(scope="session")
def random_decoder() -> Callable[..., GemmaForCausalLM]:
    """(config: GemmaConfig, seed=0) -> a Gemma decoder with every parameter random."""

    def make(config: GemmaConfig, seed: int = 0) -> GemmaForCausalLM:
        torch.manual_seed(seed)
        return _randomized(GemmaForCausalLM(config))

    return make


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    """CORPUS: the text the small tokenizers are trained on."""
    return CORPUS


@pytest.fixture(scope="session")
def make_tokenizer() -> Callable[..., PaliGemmaTokenizer]:
    """(vocab_size=1400, seg_tokens=False) -> a small tokenizer trained on CORPUS (tokenizers backend)."""

    def make(vocab_size: int = 1400, seg_tokens: bool = False) -> PaliGemmaTokenizer:
        return train_tokenizer(CORPUS, vocab_size=vocab_size, seg_tokens=seg_tokens)

    return make


@pytest.fixture(scope="session")
def train_sentencepiece() -> Callable[..., spm.SentencePieceProcessor]:
    """(image_piece=True) -> a tiny SentencePiece model trained on CORPUS, laid out like Gemma's:
    control ids 0-3, no dummy prefix, no whitespace normalization, unseen characters spelled as bytes;
    without `image_piece` it has no <image> piece, as PaliGemma's tokenizer.model."""

    def train(image_piece: bool = True) -> spm.SentencePieceProcessor:
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS),
            model_writer=model,
            model_type="bpe",
            vocab_size=1400,
            hard_vocab_limit=False,
            pad_id=0,
            eos_id=1,
            bos_id=2,
            unk_id=3,
            pad_piece=PAD,
            eos_piece=EOS,
            bos_piece=BOS,
            unk_piece=UNK,
            user_defined_symbols=[IMAGE, *LOC_TOKENS] if image_piece else list(LOC_TOKENS),
            add_dummy_prefix=False,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            byte_fallback=True,
            minloglevel=2,
        )
        return spm.SentencePieceProcessor(model_proto=model.getvalue())

    return train


@pytest.fixture(scope="session")
def make_sentencepiece_tokenizer(train_sentencepiece) -> Callable[[], PaliGemmaTokenizer]:
    """() -> a PaliGemmaTokenizer on `train_sentencepiece()`'s model."""
    return lambda: PaliGemmaTokenizer(train_sentencepiece())


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, make_tokenizer: Callable[..., PaliGemmaTokenizer]) -> Path:
    """A full checkpoint folder, built once: a tiny random PaliGemma written by transformers, plus a trained
    tokenizer."""
    pytest.importorskip("transformers")
    from pgemma.reference import build_reference_checkpoint

    folder = tmp_path_factory.mktemp("tiny_paligemma")
    tokenizer = make_tokenizer()
    config = replace(
        PaliGemmaConfig.tiny(),
        text_config=replace(GemmaConfig.tiny(), vocab_size=tokenizer.vocab_size),
        image_token_index=tokenizer.image_id,
    )
    build_reference_checkpoint(folder, config, seed=0)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random PaliGemma's checkpoint folder (`Recipe.tiny()`), with the recipe.json that names its world:
    a model to fine-tune."""
    recipe = Recipe.tiny()
    tokenizer = build_tokenizer(recipe.world, recipe.model.vocab_size)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base")
    export(build_model(recipe.model, recipe.world, tokenizer), tokenizer, folder)
    (folder / "recipe.json").write_text(json.dumps(asdict(recipe)))
    return folder


@pytest.fixture(scope="session")
def built_book() -> Path:
    """Build the book once per test session (warnings are errors) into _build/html."""
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "-W", "--keep-going"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, f"jupyter-book build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return ROOT / "_build" / "html"
