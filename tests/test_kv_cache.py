"""The KV cache object, and the decoder's cached decoding against full recomputation."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgemma.config import Gemma2Config, GemmaConfig
from pgemma.kv_cache import KVCache
from pgemma.masks import decoder_mask


def test_empty_cache_is_preallocated_per_layer():
    config = GemmaConfig.tiny()
    cache = KVCache.empty(config, batch_size=3, max_length=10, dtype=torch.bfloat16)
    assert len(cache.keys) == len(cache.values) == config.num_hidden_layers
    assert cache.keys[0].shape == (3, config.num_key_value_heads, 10, config.head_dim)  # (B, K, S_max, H)
    assert cache.keys[0].dtype == torch.bfloat16
    assert (cache.length, cache.batch_size, cache.max_length) == (0, 3, 10)


def test_update_writes_after_the_stored_tokens_and_advance_counts_them():
    cache = KVCache.empty(GemmaConfig.tiny(), batch_size=1, max_length=6)
    first = torch.randn(1, 1, 2, 16)
    keys, values = cache.update(0, first, -first)
    assert torch.equal(keys, first) and torch.equal(values, -first)
    longer = cache.advance(2)
    assert (cache.length, longer.length) == (0, 2)  # a new object; the old one is unchanged
    second = torch.randn(1, 1, 3, 16)
    keys, _ = longer.update(0, second, second)
    assert torch.equal(keys, torch.cat([first, second], dim=2))  # (B, K, 5, H)
    assert not longer.keys[1].any()  # other layers untouched


def test_overflow_and_oversized_caches_are_refused():
    cache = KVCache.empty(GemmaConfig.tiny(), batch_size=1, max_length=4).advance(3)
    with pytest.raises(ValueError, match="holds 4 tokens; 3 are stored and 2 more do not fit"):
        cache.update(0, torch.zeros(1, 1, 2, 16), torch.zeros(1, 1, 2, 16))
    with pytest.raises(ValueError, match=r"max_length \(129\) exceeds the context of max_position_embeddings=128"):
        KVCache.empty(GemmaConfig.tiny(), batch_size=1, max_length=129)


@settings(max_examples=10, deadline=None)
@given(
    kv_heads=st.sampled_from([1, 2, 4]),
    batch=st.integers(1, 3),
    prompt=st.integers(1, 6),
    steps=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_cached_decoding_equals_recomputation(kv_heads, batch, prompt, steps, seed, data, random_decoder):
    config = GemmaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        head_dim=8,
        max_position_embeddings=32,
    )
    model = random_decoder(config, seed)
    length = prompt + steps
    padding = [data.draw(st.integers(0, prompt - 1)) for _ in range(batch)]
    attention_mask = torch.stack([(torch.arange(length) >= pad).long() for pad in padding])
    types = (torch.arange(length) >= prompt).long().expand(batch, length)
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)  # as generation counts: from each first real token
    embeds = torch.randn(batch, length, config.hidden_size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full, _, _ = model(embeds, decoder_mask(length, length, attention_mask, types), positions)
        cache = KVCache.empty(config, batch, length)
        logits, cache, _ = model(
            embeds[:, :prompt],
            decoder_mask(prompt, prompt, attention_mask[:, :prompt], types[:, :prompt]),
            positions[:, :prompt],
            cache,
        )
        pieces = [logits]
        for t in range(prompt, length):
            mask = decoder_mask(1, t + 1, attention_mask[:, : t + 1], types[:, t : t + 1])
            logits, cache, _ = model(embeds[:, t : t + 1], mask, positions[:, t : t + 1], cache)
            pieces.append(logits)
    assert cache.length == length
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-5)


def test_bytes_needed_is_what_empty_allocates():
    config = GemmaConfig.tiny()
    for dtype in (torch.float32, torch.bfloat16):
        cache = KVCache.empty(config, batch_size=3, max_length=17, dtype=dtype)
        allocated = sum(t.numel() * t.element_size() for t in (*cache.keys, *cache.values))
        assert KVCache.bytes_needed(config, 3, 17, dtype) == allocated
    # 2 (keys, values) * 2 layers * 1 kv head * 16 dims * 4 bytes = 256 bytes per token.
    assert KVCache.bytes_needed(config, 1, 10**9) == 256 * 10**9


def test_sliding_layers_hold_at_most_the_window():
    config = Gemma2Config.tiny()  # window 4; layers alternate sliding, full
    cache = KVCache.empty(config, batch_size=2, max_length=10)
    slots = [keys.shape[2] for keys in cache.keys]
    assert slots == [4 if config.is_sliding(i) else 10 for i in range(config.num_hidden_layers)]
    assert [values.shape for values in cache.values] == [keys.shape for keys in cache.keys]
    assert cache.max_length == 10
    short = KVCache.empty(config, batch_size=2, max_length=3)  # a context shorter than the window
    assert [keys.shape[2] for keys in short.keys] == [3] * config.num_hidden_layers


def test_a_sliding_layer_keeps_its_last_tokens_oldest_first():
    cache = KVCache.empty(Gemma2Config.tiny(), batch_size=1, max_length=10)  # layer 0 slides, window 4
    tokens = torch.randn(1, 1, 10, 16)  # (B, K, S, H)
    keys, values = cache.update(0, tokens[:, :, :6], -tokens[:, :, :6])  # a prompt longer than the window
    assert torch.equal(keys, tokens[:, :, :6]) and torch.equal(values, -tokens[:, :, :6])
    assert torch.equal(cache.keys[0], tokens[:, :, 2:6])  # the window of the next query
    cache = cache.advance(6)
    assert (cache.key_length(0, 1), cache.key_length(1, 1)) == (5, 7)
    keys, values = cache.update(0, tokens[:, :, 6:8], -tokens[:, :, 6:8])
    assert torch.equal(keys, tokens[:, :, 2:8]) and torch.equal(values, -tokens[:, :, 2:8])
    assert torch.equal(cache.keys[0], tokens[:, :, 4:8]) and torch.equal(cache.values[0], -tokens[:, :, 4:8])


def test_bytes_needed_counts_the_window_of_sliding_layers():
    config = Gemma2Config.tiny()
    for max_length in (3, 17):
        cache = KVCache.empty(config, batch_size=3, max_length=max_length)
        allocated = sum(t.numel() * t.element_size() for t in (*cache.keys, *cache.values))
        assert KVCache.bytes_needed(config, 3, max_length) == allocated
    # PaliGemma 2 3B at 896 px: 13 of 26 layers keep 4096 of 8192 tokens, a quarter less.
    gemma2 = Gemma2Config.gemma2_2b()
    full = 2 * 26 * 4 * 256 * 2 * 8192  # keys and values, layers, kv heads, head dim, bfloat16 bytes, tokens
    assert KVCache.bytes_needed(gemma2, 1, 8192, torch.bfloat16) == full * 3 // 4


def test_an_allocation_failure_names_the_bytes(monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 25600000000 bytes.")

    config = dataclasses.replace(GemmaConfig.tiny(), max_position_embeddings=10**9)
    monkeypatch.setattr(torch, "zeros", out_of_memory)
    with pytest.raises(MemoryError) as error:
        KVCache.empty(config, batch_size=1, max_length=10**8)
    assert str(error.value).startswith(
        "cannot allocate a KV cache of 25,600,000,000 bytes (23.8 GiB) on cpu for 1 rows of 100000000 tokens; "
        "lower max_length or batch_size (DefaultCPUAllocator: not enough memory"
    )


@pytest.mark.parametrize("batch_size, max_length", [(0, 4), (1, 0), (True, 4), (1, 2.0)])
def test_empty_refuses_sizes_that_are_not_positive_ints(batch_size, max_length):
    with pytest.raises(ValueError, match="must be a positive int"):
        KVCache.empty(GemmaConfig.tiny(), batch_size, max_length)
