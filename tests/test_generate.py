"""Tests for pgemma.generate: parity with transformers' generate, cache vs oracle, sampling, EOS."""

import importlib
import math
import re
from dataclasses import FrozenInstanceError, replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pgemma.checkpoint import load_model
from pgemma.config import GemmaConfig, PaliGemmaConfig
from pgemma.generate import (
    Sampling,
    TextStreamer,
    filter_logits,
    generate,
    generate_tokens,
    make_generator,
    sample_next_token,
)
from pgemma.kv_cache import KVCache
from pgemma.processor import PaliGemmaProcessor, load_processor
from pgemma.profiling import random_batch
from pgemma.tokenizer import PaliGemmaTokenizer

PROMPTS = ["caption en", "answer en what color is the cat? say it"]  # different lengths: one row is padded
NEW_TOKENS = 10


def images(count: int = 2) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint)


@pytest.fixture(scope="module")
def processor(checkpoint):
    return load_processor(checkpoint)


@pytest.fixture(scope="module")
def batch(processor):
    return processor(images(), PROMPTS)


def run(model, batch, **options) -> torch.Tensor:
    """All generated tokens as int64[B, steps]."""
    return torch.stack(list(generate_tokens(model, batch, **options)), dim=1)


def test_greedy_matches_transformers_generate(checkpoint, model, batch):
    from pgemma.reference import load_reference_model

    hf_model = load_reference_model(checkpoint)
    with torch.no_grad():
        expected = hf_model.generate(
            input_ids=batch.input_ids,
            pixel_values=batch.pixel_values,
            attention_mask=batch.attention_mask,
            token_type_ids=batch.token_type_ids,
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,  # transformers would stop at <eos>; we compare every step
        )[:, batch.input_ids.shape[1] :]
    ours = run(model, batch, max_new_tokens=NEW_TOKENS)
    assert torch.equal(ours[:, :NEW_TOKENS], expected)


def test_cached_matches_uncached_oracle(model, batch):
    assert torch.equal(
        run(model, batch, max_new_tokens=NEW_TOKENS), run(model, batch, max_new_tokens=NEW_TOKENS, use_cache=False)
    )
    sampled = Sampling(do_sample=True, temperature=1.5, top_k=50, top_p=0.95, seed=7)
    assert torch.equal(
        run(model, batch, max_new_tokens=NEW_TOKENS, sampling=sampled),
        run(model, batch, max_new_tokens=NEW_TOKENS, sampling=sampled, use_cache=False),
    )


def test_decode_step_is_forward_with_one_new_token(model, batch):
    batch_size, length = batch.input_ids.shape
    assert batch.attention_mask[:, 0].eq(0).any()  # a padded row: the mask must hide its padding keys
    positions = batch.attention_mask.cumsum(-1).clamp(min=1)
    with torch.inference_mode():
        cache = KVCache.empty(model.config.text_config, batch_size, length + 1)
        prefill = model(
            batch.input_ids,
            batch.pixel_values,
            batch.attention_mask,
            batch.token_type_ids,
            positions,
            cache,
            logits_to_keep=1,
        )
        new_ids = prefill.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        mask = torch.cat([batch.attention_mask, torch.ones_like(new_ids)], dim=-1)
        position = positions[:, -1:] + 1
        # Both write the new token's keys at the same place of the shared buffers, so run forward last.
        fast = model.decode_step(new_ids, mask, position, prefill.kv_cache)
        fast_logits = fast.logits.clone()
        general = model(new_ids, None, mask, torch.ones_like(new_ids), position, prefill.kv_cache, logits_to_keep=1)
    assert fast.kv_cache.length == general.kv_cache.length == length + 1
    assert fast_logits.shape == (batch_size, 1, model.config.text_config.vocab_size)
    assert torch.equal(fast_logits, general.logits)


def test_padded_row_answers_like_the_prompt_alone(model, processor, batch):
    alone = processor(images()[0], PROMPTS[0])
    assert batch.attention_mask[0].eq(0).any()  # the first prompt is the padded one
    assert torch.equal(run(model, batch, max_new_tokens=NEW_TOKENS)[0], run(model, alone, max_new_tokens=NEW_TOKENS)[0])


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(model, batch):
    def sampled(seed: int) -> torch.Tensor:
        sampling = Sampling(do_sample=True, temperature=2.0, seed=seed)
        return run(model, batch, max_new_tokens=NEW_TOKENS, sampling=sampling)

    state = torch.random.get_rng_state()
    first = sampled(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first, sampled(1))
    assert not torch.equal(first, sampled(2))


def test_top_k_one_is_greedy(model, batch):
    greedy = run(model, batch, max_new_tokens=NEW_TOKENS)
    for sampling in Sampling(do_sample=True, top_k=1, seed=3), Sampling(do_sample=True, top_p=1e-6, seed=3):
        assert torch.equal(run(model, batch, max_new_tokens=NEW_TOKENS, sampling=sampling), greedy)


class EndsRowZero(nn.Module):
    """A test double: the wrapped model, except that row 0 prefers <eos> from the `after`-th new token on."""

    def __init__(self, model, prompt_length: int, after: int):
        super().__init__()
        self.model, self.config = model, model.config
        self.language_model = model.language_model
        self.prompt_length, self.after = prompt_length, after

    def forward(
        self, input_ids, pixel_values, attention_mask, token_type_ids, position_ids, kv_cache, logits_to_keep=None
    ):
        output = self.model(
            input_ids,
            pixel_values,
            attention_mask,
            token_type_ids,
            position_ids,
            kv_cache,
            logits_to_keep=logits_to_keep,
        )
        return self.prefer_eos(output, attention_mask.shape[1])

    @torch.inference_mode()
    def decode_step(self, new_ids, attention_mask, position_ids, kv_cache):
        output = self.model.decode_step(new_ids, attention_mask, position_ids, kv_cache)
        return self.prefer_eos(output, kv_cache.length + new_ids.shape[1])

    def prefer_eos(self, output, length: int):
        """``length``: cached + new tokens."""
        if length >= self.prompt_length + self.after:
            output.logits[0, -1, self.config.eos_token_id] = 1e4
        return output


def test_eos_stops_a_row(model, processor, batch):
    prompt_length = batch.input_ids.shape[1]
    ends = EndsRowZero(model, prompt_length, after=3)
    tokens = run(ends, batch, max_new_tokens=NEW_TOKENS)
    eos, pad = model.config.eos_token_id, model.config.pad_token_id
    assert tokens.shape == (2, NEW_TOKENS)
    assert tokens[0, 3] == eos and tokens[0, 4:].eq(pad).all() and tokens[0, :3].ne(eos).all()
    assert tokens[1].ne(eos).all()
    answers = generate(ends, processor, images(), PROMPTS, max_new_tokens=NEW_TOKENS)
    assert answers[0] == processor.decode(tokens[0, :3].tolist())
    assert answers[1] == processor.decode(tokens[1].tolist())


def test_generation_ends_when_every_row_has_finished(model, processor):
    alone = processor(images()[0], PROMPTS[0])
    steps = list(generate_tokens(EndsRowZero(model, alone.input_ids.shape[1], after=2), alone, max_new_tokens=50))
    assert len(steps) == 3 and steps[-1].item() == model.config.eos_token_id


def test_generate_streams_what_it_returns(model, processor):
    pieces: list[list[str]] = [[], []]
    answers = generate(
        model,
        processor,
        images(),
        PROMPTS,
        max_new_tokens=NEW_TOKENS,
        stream=lambda row, text: pieces[row].append(text),
    )
    assert ["".join(p) for p in pieces] == answers
    assert all(len(p) > 1 for p in pieces)  # it arrived in several pieces, not at the end
    greedy = run(model, processor(images(), PROMPTS), max_new_tokens=NEW_TOKENS)
    assert answers[1] == processor.decode(greedy[1].tolist())


def test_streamer_holds_back_incomplete_characters(make_sentencepiece_tokenizer):
    tokenizer: PaliGemmaTokenizer = make_sentencepiece_tokenizer()
    ids = tokenizer.encode("a \u732b cat")  # the CJK character is three byte-fallback tokens
    streamer = TextStreamer(tokenizer)
    pieces = [streamer.push(i) for i in ids]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) + streamer.flush() == "a \u732b cat"
    assert "" in pieces  # held back while the character was incomplete


def test_filter_logits_matches_transformers_warpers():
    transformers = pytest.importorskip("transformers")
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3
    for temperature, top_k, top_p in [(0.7, None, None), (1.0, 5, None), (1.0, None, 0.9), (1.3, 20, 0.5)]:
        expected = logits / temperature
        if top_k is not None:
            expected = transformers.TopKLogitsWarper(top_k)(None, expected)
        if top_p is not None:
            expected = transformers.TopPLogitsWarper(top_p)(None, expected)
        ours = filter_logits(logits, Sampling(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p))
        assert torch.equal(ours.isinf(), expected.isinf())
        kept = expected.isfinite()
        torch.testing.assert_close(ours[kept], expected[kept])


def test_filter_logits_worked_example():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()

    def kept(**options) -> list[bool]:
        return filter_logits(logits, Sampling(do_sample=True, **options)).isfinite()[0].tolist()

    assert kept(top_k=2) == [True, True, False, False]
    assert kept(top_p=0.5) == [True, False, False, False]
    assert kept(top_p=0.7) == [True, True, False, False]
    assert kept(top_p=0.96) == [True, True, True, True]


def test_sample_next_token_follows_the_distribution():
    probs = torch.tensor([0.1, 0.6, 0.3])
    logits = probs.log().expand(20_000, 3)
    counts = torch.bincount(sample_next_token(logits, Sampling(do_sample=True), make_generator(0)), minlength=3)
    torch.testing.assert_close(counts / 20_000, probs, atol=0.015, rtol=0)
    assert sample_next_token(logits[:2]).tolist() == [1, 1]


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(temperature=0.7), "temperature=0.7 only applies when sampling; pass do_sample=True"),
        (dict(top_k=5), "top_k=5 only applies when sampling; pass do_sample=True"),
        (dict(top_p=0.9), "top_p=0.9 only applies when sampling; pass do_sample=True"),
        (dict(seed=0), "seed=0 only applies when sampling; pass do_sample=True"),
        (dict(do_sample=1), "do_sample must be True or False, got 1"),
        (dict(do_sample=True, temperature=0.0), "temperature must be > 0, got 0.0; use do_sample=False for greedy"),
        (dict(do_sample=True, temperature=-1), "temperature must be > 0, got -1"),
        (dict(do_sample=True, temperature=math.nan), "temperature must be a finite number, got nan"),
        (dict(do_sample=True, temperature=math.inf), "temperature must be a finite number, got inf"),
        (dict(do_sample=True, temperature=True), "temperature must be a finite number, got True"),
        (dict(do_sample=True, temperature="hot"), "temperature must be a finite number, got 'hot'"),
        (dict(do_sample=True, top_k=0), "top_k must be a positive int, got 0"),
        (dict(do_sample=True, top_k=2.0), "top_k must be a positive int, got 2.0"),
        (dict(do_sample=True, top_k=True), "top_k must be a positive int, got True"),
        (dict(do_sample=True, top_p=1.5), "top_p must be in (0, 1], got 1.5"),
        (dict(do_sample=True, top_p=0), "top_p must be in (0, 1], got 0"),
        (dict(do_sample=True, top_p=math.nan), "top_p must be in (0, 1], got nan"),
        (dict(do_sample=True, top_p=math.inf), "top_p must be in (0, 1], got inf"),
        (dict(do_sample=True, top_p=True), "top_p must be in (0, 1], got True"),
        (dict(do_sample=True, seed=True), "seed must be an int, got True"),
        (dict(do_sample=True, seed=1.5), "seed must be an int, got 1.5"),
        (dict(do_sample=True, seed=2**64), f"seed must be in [-2**63, 2**64), got {2**64}"),
        (dict(do_sample=True, seed=-(2**63) - 1), f"seed must be in [-2**63, 2**64), got {-(2**63) - 1}"),
    ],
)
def test_sampling_refuses_bad_settings(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Sampling(**options)


def test_sampling_settings():
    assert Sampling.greedy() == Sampling() and not Sampling().do_sample
    edges = Sampling(do_sample=True, temperature=2, top_k=10**6, top_p=1, seed=-1)  # all valid
    assert edges.temperature == 2 and edges.top_k == 10**6
    with pytest.raises(FrozenInstanceError):
        edges.seed = 0  # type: ignore[misc]
    # from_options: greedy unless something is given; what is not given keeps its default.
    assert Sampling.from_options() == Sampling.greedy()
    assert Sampling.from_options(seed=3) == Sampling(do_sample=True, seed=3)
    assert Sampling.from_options(top_p=0.9) == Sampling(do_sample=True, top_p=0.9)
    assert Sampling.from_options(0.8, 40, 0.95, 0) == Sampling(True, 0.8, 40, 0.95, 0)
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        Sampling.from_options(top_k=0)


def test_bad_options(model, processor, batch):
    with pytest.raises(ValueError, match=re.escape("max_new_tokens must be a positive int, got 0")):
        run(model, batch, max_new_tokens=0)
    with pytest.raises(ValueError, match=re.escape("max_new_tokens must be a positive int, got True")):
        run(model, batch, max_new_tokens=True)
    with pytest.raises(ValueError, match=re.escape("max_new_tokens must be a positive int, got True")):
        generate(model, processor, images(), PROMPTS, max_new_tokens=True)
    with pytest.raises(TypeError, match=re.escape("sampling must be a Sampling, e.g. Sampling(do_sample=True")):
        run(model, batch, max_new_tokens=NEW_TOKENS, sampling=True)  # the old positional do_sample
    with pytest.raises(TypeError, match="sampling must be a Sampling"):
        generate(model, processor, images(), PROMPTS, sampling=dict(do_sample=True))
    with pytest.raises(ValueError, match="exceeds the model's context of 128"):
        run(model, batch, max_new_tokens=200)
    with pytest.raises(TypeError, match="batch must be a ProcessorBatch"):
        run(model, batch._asdict())


def test_processor_from_another_checkpoint_is_refused(model, processor, make_tokenizer):
    other = PaliGemmaProcessor(processor.tokenizer, image_size=64, num_image_tokens=64)
    with pytest.raises(ValueError, match="image_size is 64 but the model's config needs 32"):
        generate(model, other, images(1), "caption en")
    other_tokenizer = make_tokenizer(seg_tokens=True)  # 128 more ids than the model embeds
    with pytest.raises(ValueError, match="the tokenizer has .* ids but the model embeds only"):
        generate(
            model, PaliGemmaProcessor(other_tokenizer, image_size=32, num_image_tokens=16), images(1), "caption en"
        )


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_decode_step_without_padding_needs_no_mask(use_sdpa, configs, random_model, make_inputs):
    config = configs["grouped_query"]
    model = random_model(config, seed=4, use_sdpa=use_sdpa)
    inputs = make_inputs(config, padding=(0, 0))
    batch_size, length = inputs["input_ids"].shape
    positions = torch.arange(1, length + 1).expand(batch_size, length)
    new_ids = torch.full((batch_size, 1), 7)
    mask = torch.ones(batch_size, length + 1, dtype=torch.long)
    logits = []
    for step_mask in (mask, None):
        with torch.inference_mode():
            cache = KVCache.empty(config.text_config, batch_size, length + 1)
            prefill = model(
                inputs["input_ids"],
                inputs["pixel_values"],
                mask[:, :length],
                inputs["token_type_ids"],
                positions,
                cache,
                logits_to_keep=1,
            )
            logits.append(model.decode_step(new_ids, step_mask, positions[:, -1:] + 1, prefill.kv_cache).logits)
    assert torch.equal(*logits)


def test_a_kv_cache_that_cannot_fit_is_refused_before_allocating(random_model, monkeypatch):
    config = replace(PaliGemmaConfig.tiny(), text_config=replace(GemmaConfig.tiny(), max_position_embeddings=10**9))
    model = random_model(config)
    batch = random_batch(config, batch_size=2, text_length=4)  # 16 image tokens + 4: a prompt of 20
    generate_module = importlib.import_module("pgemma.generate")  # not the function pgemma exports

    def no_allocation(*args, **kwargs):
        raise AssertionError("KVCache.empty was called")

    monkeypatch.setattr(generate_module, "available_bytes", lambda device: 10**9)
    monkeypatch.setattr(KVCache, "empty", no_allocation)
    with pytest.raises(ValueError) as error:
        next(generate_tokens(model, batch, max_new_tokens=10**8))
    # 256 bytes per token and row (GemmaConfig.tiny), 2 rows of 20 + 10**8 tokens.
    assert str(error.value) == (
        "the KV cache for 2 row(s) of 20 prompt tokens + max_new_tokens=100000000 needs 51,200,010,240 bytes "
        "(47.7 GiB) but cpu has 1,000,000,000 bytes (0.9 GiB) available; lower max_new_tokens "
        "(or the number of prompts, or use a smaller dtype)"
    )
    monkeypatch.undo()
    # A cache that fits exactly is allocated for the prompt and max_new_tokens only, not the whole context.
    needed = KVCache.bytes_needed(config.text_config, 2, 20 + 3)
    monkeypatch.setattr(generate_module, "available_bytes", lambda device: needed)
    allocated = []
    empty = KVCache.empty
    monkeypatch.setattr(KVCache, "empty", lambda *args: allocated.append(args[2]) or empty(*args))
    assert len(list(generate_tokens(model, batch, max_new_tokens=3))) <= 3
    assert allocated == [23]
    monkeypatch.setattr(generate_module, "available_bytes", lambda device: needed - 1)
    with pytest.raises(ValueError, match="needs 11,776 bytes"):
        next(generate_tokens(model, batch, max_new_tokens=3))
    monkeypatch.setattr(generate_module, "available_bytes", lambda device: None)  # unknown: not checked
    assert len(list(generate_tokens(model, batch, max_new_tokens=3))) <= 3
