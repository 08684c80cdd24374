"""Tests for pgemma.profiling: median timing, decode timing with and without the cache, cache bytes."""

from dataclasses import replace

import pytest
import torch

from pgemma import profiling
from pgemma.config import GemmaConfig, PaliGemmaConfig
from pgemma.generate import generate_tokens
from pgemma.kv_cache import KVCache
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.profiling import (
    DecodeTiming,
    allocated_bytes,
    kv_cache_bytes,
    median_seconds,
    random_batch,
    time_decoding,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # <eos> moved to id 3, which this seed's greedy answers never write: generation runs to the end.
    config = replace(PaliGemmaConfig.tiny(), eos_token_id=3)
    return PaliGemmaForConditionalGeneration(config).eval()


def test_median_seconds_runs_warmup_plus_repeats_and_takes_the_median(monkeypatch):
    # A fake clock: the k-th timed call lasts durations[k] seconds, warm-up calls are not timed.
    durations, now, calls = [5.0, 1.0, 3.0, 100.0, 2.0], [0.0], []

    def call():
        calls.append(1)
        if len(calls) > 2:
            now[0] += durations[len(calls) - 3]

    monkeypatch.setattr(profiling.time, "perf_counter", lambda: now[0])
    assert median_seconds(call, repeats=5, warmup=2) == 3.0
    assert len(calls) == 7
    with pytest.raises(ValueError, match="repeats"):
        median_seconds(lambda: None, repeats=0)


def test_kv_cache_bytes_is_what_kv_cache_empty_allocates():
    for text in (GemmaConfig.tiny(), replace(GemmaConfig.tiny(), num_key_value_heads=2)):
        for dtype in (torch.float32, torch.bfloat16):
            cache = KVCache.empty(text, batch_size=3, max_length=17, dtype=dtype)
            assert kv_cache_bytes(text, 3, 17, dtype) == allocated_bytes(cache)


def test_kv_cache_bytes_of_paligemma_3b():
    config = PaliGemmaConfig.paligemma_3b_224()
    # 2 * 18 layers * 1 kv head * 256 dims * 2 bytes = 18,432 bytes per token in bfloat16.
    assert kv_cache_bytes(config, 1, 1) == 18_432
    assert kv_cache_bytes(config, 4, 1000, torch.float32) == 4 * 1000 * 36_864
    multi_head = replace(config.text_config, num_key_value_heads=8)
    assert kv_cache_bytes(multi_head, 1, 1) == 8 * kv_cache_bytes(config, 1, 1)
    with pytest.raises(TypeError):
        kv_cache_bytes({"num_hidden_layers": 18}, 1, 1)
    with pytest.raises(ValueError):
        kv_cache_bytes(config, 0, 1)


def test_random_batch_has_the_processor_layout():
    config = PaliGemmaConfig.tiny()
    batch = random_batch(config, batch_size=2, text_length=5, seed=1)
    assert batch.input_ids.shape == (2, config.num_image_tokens + 5)
    assert (batch.input_ids[:, : config.num_image_tokens] == config.image_token_index).all()
    assert (batch.input_ids[:, config.num_image_tokens] == config.bos_token_id).all()
    text = batch.input_ids[:, config.num_image_tokens + 1 :]
    assert not torch.isin(text, torch.tensor([0, 1, 2, config.image_token_index])).any()
    assert batch.pixel_values.shape == (2, 3, 32, 32) and batch.pixel_values.abs().max() <= 1
    assert torch.equal(batch.input_ids, random_batch(config, 2, 5, seed=1).input_ids)


def test_time_decoding_with_and_without_cache(model):
    batch = random_batch(model.config, 1, 4)
    for use_cache in (True, False):
        timing = time_decoding(model, batch, new_tokens=6, use_cache=use_cache, repeats=2, warmup=0)
        assert isinstance(timing, DecodeTiming)
        assert len(timing.step_seconds) == 5 and timing.prefill_seconds > 0
        assert timing.total_seconds == pytest.approx(timing.prefill_seconds + sum(timing.step_seconds), rel=0.5)
        assert timing.per_token_seconds == pytest.approx(timing.total_seconds / 6)
    with pytest.raises(ValueError, match="new_tokens"):
        time_decoding(model, batch, new_tokens=1, use_cache=True)


def test_time_decoding_refuses_an_answer_that_ends_early(model):
    batch = random_batch(model.config, 1, 3)
    first = next(generate_tokens(model, batch, max_new_tokens=2)).item()
    ends_at_once = replace(model.config, eos_token_id=first)  # the first greedy token becomes <eos>
    stopping = PaliGemmaForConditionalGeneration(ends_at_once).eval()
    stopping.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="stopped at <eos> after 1 of 5"):
        time_decoding(stopping, batch, new_tokens=5, use_cache=True, repeats=1, warmup=0)
