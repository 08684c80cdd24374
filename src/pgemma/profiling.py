"""Measuring speed and memory: median timings, decoding with and without the KV cache, cache sizes.

Book chapter: "The KV-cache" (its timing plot and memory table); also used by ``benchmarks/``.

A single timing on a shared machine is noise: another process, a frequency change or the first
call's allocations can double it. So every figure here is the **median of several repeats**
after a warm-up call, and speed-ups are only ever compared within one run (ratios, not seconds).

Memory of the KV cache is computed by formula, not measured: per layer it stores keys and values,
each float[B, K, S, H], so

    bytes = 2 (keys and values) * layers * B * K * S * H * bytes per number

``kv_cache_bytes`` is that formula (``KVCache.bytes_needed``, which generation also uses to refuse
a cache that cannot fit); the tests check it against the buffers ``KVCache.empty`` allocates.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import torch

from pgemma.config import GemmaConfig, PaliGemmaConfig
from pgemma.generate import generate_tokens
from pgemma.kv_cache import KVCache
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.processor import ProcessorBatch


def median_seconds(function: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """The median wall-clock time of ``function()`` over ``repeats`` calls, after ``warmup`` calls.

    The warm-up calls are not timed: the first call of a PyTorch operation allocates memory and
    may pick a kernel, which later calls do not pay for.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_batch(config: PaliGemmaConfig, batch_size: int, text_length: int, seed: int = 0) -> ProcessorBatch:
    """A prompt batch laid out as the processor does, with random pixels and random text ids.

    Each row is P ``<image>`` tokens, ``<bos>``, then ``text_length - 1`` random ids (no special
    ids), all prefix, no padding: what timing needs, without a tokenizer or an image file.
    """
    if batch_size < 1 or text_length < 1:
        raise ValueError(f"need batch_size >= 1 and text_length >= 1, got {batch_size} and {text_length}")
    generator = torch.Generator().manual_seed(seed)
    special = torch.tensor([config.image_token_index, config.pad_token_id, config.eos_token_id, config.bos_token_id])
    allowed = torch.arange(config.text_config.vocab_size)
    allowed = allowed[~torch.isin(allowed, special)]  # (V - 4,)
    text = allowed[torch.randint(len(allowed), (batch_size, text_length - 1), generator=generator)]
    image = torch.full((batch_size, config.num_image_tokens), config.image_token_index)
    bos = torch.full((batch_size, 1), config.bos_token_id)
    input_ids = torch.cat([image, bos, text], dim=1)  # (B, T)
    size = config.vision_config.image_size
    pixel_values = torch.rand(batch_size, 3, size, size, generator=generator) * 2 - 1  # (B, C, I, I) in [-1, 1]
    return ProcessorBatch(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        token_type_ids=torch.zeros_like(input_ids),
        pixel_values=pixel_values,
        labels=None,
    )


class DecodeTiming(NamedTuple):
    """Seconds spent generating ``len(step_seconds)`` tokens (medians over repeats)."""

    prefill_seconds: float  # the first forward pass: image + prompt, up to the first token
    step_seconds: list[float]  # step i: from token i to token i + 1 (i = 0 .. new_tokens - 2)
    total_seconds: float  # prefill + every step: the wall time of the whole answer

    @property
    def per_token_seconds(self) -> float:
        """Total time divided by the tokens written (prefill included, as a user waits for it)."""
        return self.total_seconds / (len(self.step_seconds) + 1)


def _decode_once(
    model: PaliGemmaForConditionalGeneration, batch: ProcessorBatch, new_tokens: int, use_cache: bool
) -> list[float]:
    """Wall-clock times between consecutive tokens of one greedy generation: [prefill, step 1, ...]."""
    times = []
    start = time.perf_counter()
    for _ in generate_tokens(model, batch, max_new_tokens=new_tokens, use_cache=use_cache):
        now = time.perf_counter()
        times.append(now - start)
        start = now
    if len(times) != new_tokens:
        raise ValueError(
            f"generation stopped at <eos> after {len(times)} of {new_tokens} tokens; "
            "time a prompt (or model) whose answer is at least new_tokens long"
        )
    return times


def time_decoding(
    model: PaliGemmaForConditionalGeneration,
    batch: ProcessorBatch,
    new_tokens: int,
    use_cache: bool,
    repeats: int = 3,
    warmup: int = 1,
) -> DecodeTiming:
    """Time greedy generation of ``new_tokens`` tokens with ``pgemma.generate.generate_tokens``.

    Args:
        model: a PaliGemma model in eval mode.
        batch: a ``PaliGemmaProcessor`` output (or a ``ProcessorBatch`` built by hand).
        new_tokens: tokens to generate; the answer must not end earlier with <eos>.
        use_cache: True prefills a KV cache and feeds one token per step; False recomputes the
            whole sequence, image included, at every step.
        repeats, warmup: each time is the median over ``repeats`` generations after ``warmup``.
    Returns:
        A ``DecodeTiming``; ``step_seconds[i]`` is the median time of step i across the repeats.
    """
    if not isinstance(new_tokens, int) or new_tokens < 2:
        raise ValueError(f"new_tokens must be an int >= 2 (a prefill and at least one step), got {new_tokens!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        _decode_once(model, batch, new_tokens, use_cache)
    runs = [_decode_once(model, batch, new_tokens, use_cache) for _ in range(repeats)]  # repeats x new_tokens
    medians = [statistics.median(step) for step in zip(*runs)]
    total = statistics.median(sum(run) for run in runs)
    return DecodeTiming(prefill_seconds=medians[0], step_seconds=medians[1:], total_seconds=total)


def kv_cache_bytes(
    config: GemmaConfig | PaliGemmaConfig, batch: int, length: int, dtype: torch.dtype = torch.bfloat16
) -> int:
    """Bytes of a KV cache holding ``length`` tokens for ``batch`` rows, by formula.

    Args:
        config: the decoder's config, or a PaliGemma config (its ``text_config`` is used).
        batch: B, sequences decoded together.
        length: S, tokens held per row: image tokens + prompt + generated tokens.
        dtype: the dtype of the cached keys and values (the model's activation dtype).
    Returns:
        2 * layers * B * K * S * H * bytes per element; a Gemma 2 sliding-window layer counts
        ``min(S, sliding_window)`` tokens in place of S.
    """
    if isinstance(config, PaliGemmaConfig):
        config = config.text_config
    if not isinstance(config, GemmaConfig):
        raise TypeError(f"config must be a GemmaConfig or PaliGemmaConfig, got {type(config).__name__}")
    if batch < 1 or length < 0:
        raise ValueError(f"need batch >= 1 and length >= 0, got batch={batch}, length={length}")
    return KVCache.bytes_needed(config, batch, length, dtype)


def allocated_bytes(cache: KVCache) -> int:
    """Bytes the buffers of an allocated ``KVCache`` hold (all layers, keys and values)."""
    return sum(t.numel() * t.element_size() for t in (*cache.keys, *cache.values))
