"""Writing the answer one token at a time. Book chapters: "The KV-cache" (prefill and decoding)
and "Choosing the next token" (greedy, temperature, top-k, top-p, seeds).

Generation is a loop: run the model, turn the last position's logits into one token per row,
append it, repeat until every row has written <eos> or `max_new_tokens` are out.

    prefill   the image and the whole prompt go through the model ONCE; every layer's keys and
              values land in a preallocated KV cache (`KVCache.empty`)
    decode    each step feeds only the newest token, int[B, 1], with the cache; no pixel_values:
              the image is already inside the cached keys and values

`generate_tokens(..., use_cache=False)` is the slow oracle: it recomputes the whole sequence,
image included, at every step. The tests check that both paths write the same tokens.

Choosing the token: a `Sampling` describes how, `sample_next_token` does it. Greedy
(`Sampling.greedy()`, the default) takes the argmax. Sampling, e.g.
`Sampling(do_sample=True, temperature=0.8, top_p=0.9, seed=0)`, divides the logits by
`temperature`, keeps the `top_k` most likely tokens and the smallest set of tokens whose
probability adds up to `top_p` (Holtzman et al. 2020, "nucleus sampling"), then draws from what is
left with a local `torch.Generator`, so a `seed` reproduces a sample without touching the global RNG.

Positions follow transformers' `generate`: each row counts from 1 at its first real token, so a
left-padded prompt gets the same positions (and the same answer) as the prompt alone.

Not supported: beam search, repetition penalties, stop strings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields

import torch

from pgemma.config import PaliGemmaConfig
from pgemma.devices import available_bytes
from pgemma.kv_cache import KVCache
from pgemma.paligemma import PaliGemmaForConditionalGeneration, PaliGemmaOutput
from pgemma.processor import ImageInput, PaliGemmaProcessor, ProcessorBatch
from pgemma.tokenizer import PaliGemmaTokenizer


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python, not to us


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen from the logits: greedy (the argmax) or a draw.

    Attributes:
        do_sample: False takes the most likely token; True draws from the filtered distribution.
        temperature: divides the logits before the softmax: below 1 sharpens, above 1 flattens.
        top_k: draw only among the `top_k` most likely tokens (None: all).
        top_p: draw only among the most likely tokens holding `top_p` of the mass (None: all).
        seed: seeds the draws, so the same seed writes the same answer (None: a fresh seed).
    Note: the length of the answer, `max_new_tokens`, is not here: it says when to stop, not
        which token to write, and greedy and sampled answers share it. It stays an argument of
        `generate` and `generate_tokens`, next to this.
    Note: greedy settings with a temperature, top_k, top_p or seed are refused rather than ignored:
        they would suggest a sampled answer.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be True or False, got {self.do_sample!r}")
        if not self.do_sample:  # every other field shapes the draw: greedy leaves them at their defaults
            for field in fields(self):
                value = getattr(self, field.name)
                if field.name != "do_sample" and value != field.default:
                    raise ValueError(f"{field.name}={value!r} only applies when sampling; pass do_sample=True")
        if not _is_number(self.temperature) or not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be a finite number, got {self.temperature!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}; use do_sample=False for greedy")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k must be a positive int, got {self.top_k!r}")
        if self.top_p is not None and not (_is_number(self.top_p) and 0 < self.top_p <= 1):  # refuses nan too
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:  # what torch.Generator takes
            raise ValueError(f"seed must be in [-2**63, 2**64), got {self.seed}")

    @classmethod
    def greedy(cls) -> Sampling:
        """Always the most likely token: the default."""
        return cls()

    @classmethod
    def from_options(
        cls,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Sampling:
        """Greedy if every option is None (not given); else sampling with those given (the CLI's rule)."""
        if temperature is None and top_k is None and top_p is None and seed is None:
            return cls.greedy()
        temperature = 1.0 if temperature is None else temperature
        return cls(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)


def filter_logits(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Scale by the temperature, then set to -inf every token outside the top-k and the top-p nucleus.

    Args:
        logits: float[B, V] for the next token.
        sampling: its temperature, top_k and top_p.
    Returns:
        float32[B, V]; at least one token per row stays finite.
    """
    logits = logits.float() / sampling.temperature
    top_k, top_p = sampling.top_k, sampling.top_p
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the more likely tokens before it already hold top_p of the mass;
        # the most likely token always stays.
        mass_before = probs.cumsum(dim=-1) - probs  # (B, V)
        drop_sorted = mass_before >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next_token(
    logits: torch.Tensor, sampling: Sampling = Sampling.greedy(), generator: torch.Generator | None = None
) -> torch.Tensor:
    """One token per row from the last position's logits.

    Args:
        logits: float[B, V].
        sampling: greedy or how to draw.
        generator: the random stream for sampling (see `make_generator`).
    Returns:
        int64[B].
    """
    if not sampling.do_sample:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, sampling).softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A private random stream: seeded for reproducible samples, else seeded from the OS."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


@torch.inference_mode()
def _forward(
    model: PaliGemmaForConditionalGeneration,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor | None,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor,
    position_ids: torch.Tensor,
    kv_cache: KVCache | None,
) -> PaliGemmaOutput:
    # inference_mode (no_grad, minus the bookkeeping autograd would need later: cheaper per
    # operation) sits on each call, not around the loop: a generator suspended inside a
    # `with torch.inference_mode()` block would leak it into the caller's code between tokens.
    # Only the last position's logits choose the next token: skip the output head everywhere else.
    return model(input_ids, pixel_values, attention_mask, token_type_ids, position_ids, kv_cache, logits_to_keep=1)


def generate_tokens(
    model: PaliGemmaForConditionalGeneration,
    batch: ProcessorBatch,
    max_new_tokens: int = 32,
    sampling: Sampling = Sampling.greedy(),
    use_cache: bool = True,
    vocab_size: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, int64[B], step by step.

    Rows that have written <eos> get <pad> from then on; the loop ends when all rows are
    finished or after `max_new_tokens` steps.

    Args:
        model: a PaliGemma model (in eval mode).
        batch: a `PaliGemmaProcessor` output without suffixes; its labels are ignored.
        max_new_tokens: the most tokens written per row.
        sampling: how each token is chosen (default: greedy).
        use_cache: False recomputes the whole sequence every step (the test oracle).
        vocab_size: write only ids below this, the tokenizer's vocabulary. PaliGemma's embedding
            has 63 more rows (257216 vs 257153 ids), padding that no text maps to.
    """
    if not isinstance(batch, ProcessorBatch):
        raise TypeError(f"batch must be a ProcessorBatch from PaliGemmaProcessor, got {type(batch).__name__}")
    if not isinstance(sampling, Sampling):
        raise TypeError(
            f"sampling must be a Sampling, e.g. Sampling(do_sample=True, temperature=0.8), got {sampling!r}"
        )
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    config = model.config
    input_ids, attention_mask, token_type_ids = batch.input_ids, batch.attention_mask, batch.token_type_ids
    batch_size, prompt_length = input_ids.shape  # (B, T)
    total = prompt_length + max_new_tokens
    if total > config.text_config.max_position_embeddings:
        raise ValueError(
            f"a prompt of {prompt_length} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
            f"context of {config.text_config.max_position_embeddings}; lower max_new_tokens"
        )
    weight = model.language_model.model.embed_tokens.weight
    device = weight.device
    input_ids, attention_mask, token_type_ids = (t.to(device) for t in (input_ids, attention_mask, token_type_ids))
    pixel_values = batch.pixel_values.to(device)
    generator = make_generator(sampling.seed, device) if sampling.do_sample else None
    # 1, 2, 3, ... from each row's first real token (padding, on the left, gets 1 and is never seen).
    position_ids = attention_mask.cumsum(dim=-1).clamp(min=1)  # (B, T)
    cache = None
    if use_cache:  # room for every token this call can write, and no more; refused before allocating
        _check_cache_fits(config, batch_size, prompt_length, max_new_tokens, weight.dtype, device)
        cache = KVCache.empty(config.text_config, batch_size, total, weight.dtype, device)
    # Every token written from here on is real: the attention mask of step i is the first
    # prompt_length + i + 1 columns of this one, a view rather than a new tensor per step.
    full_attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch_size, max_new_tokens)], dim=-1)
    # Without padding every new token sees every key: the decode steps then need no mask at all.
    padded = not attention_mask.all()

    # Prefill: the image is encoded here, once.
    output = _forward(model, input_ids, pixel_values, attention_mask, token_type_ids, position_ids, cache)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=device)  # (B,)
    next_position = position_ids[:, -1:]  # (B, 1)
    suffix_type = torch.ones_like(next_position)  # generated tokens are suffix (type 1): causal
    for step in range(max_new_tokens):
        logits = output.logits[:, -1, :vocab_size]  # (B, V)
        next_token = sample_next_token(logits, sampling, generator)
        next_token = next_token.masked_fill(finished, config.pad_token_id)  # (B,)
        finished |= next_token == config.eos_token_id
        yield next_token
        if step == max_new_tokens - 1 or finished.all():
            return
        new_ids = next_token[:, None]  # (B, 1)
        next_position = next_position + 1
        attention_mask = full_attention_mask[:, : prompt_length + step + 1]  # (B, S)
        if use_cache:
            # Decode: only the new token; the cache holds everything before it.
            output = model.decode_step(new_ids, attention_mask if padded else None, next_position, output.kv_cache)
        else:
            input_ids = torch.cat([input_ids, new_ids], dim=-1)  # (B, T + step + 1)
            token_type_ids = torch.cat([token_type_ids, suffix_type], dim=-1)
            position_ids = torch.cat([position_ids, next_position], dim=-1)
            output = _forward(model, input_ids, pixel_values, attention_mask, token_type_ids, position_ids, None)


def _check_cache_fits(
    config: PaliGemmaConfig,
    batch_size: int,
    prompt_length: int,
    max_new_tokens: int,
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """Refuse a KV cache larger than the memory left on ``device``, naming both sizes.

    A context of a million tokens is a valid config, but a cache for it may need more memory than
    the machine has; asked for it, the allocator fails deep inside torch, or the operating system
    ends the process.
    """
    needed = KVCache.bytes_needed(config.text_config, batch_size, prompt_length + max_new_tokens, dtype)
    available = available_bytes(device)
    if available is not None and needed > available:
        raise ValueError(
            f"the KV cache for {batch_size} row(s) of {prompt_length} prompt tokens + max_new_tokens="
            f"{max_new_tokens} needs {needed:,} bytes ({needed / 2**30:.1f} GiB) but {device} has "
            f"{available:,} bytes ({available / 2**30:.1f} GiB) available; lower max_new_tokens "
            "(or the number of prompts, or use a smaller dtype)"
        )


class TextStreamer:
    """Turns one row's tokens into text pieces as they arrive.

    Each push decodes the whole answer so far and returns what is new, so pieces join up to
    exactly `tokenizer.decode(all_ids)`. A character spread over several byte tokens is held back
    until it is complete (until then it decodes to U+FFFD).
    """

    def __init__(self, tokenizer: PaliGemmaTokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd") or not text.startswith(self.text):
            return ""
        piece, self.text = text[len(self.text) :], text
        return piece

    def flush(self) -> str:
        """Whatever was held back, once no more tokens will come."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        piece, self.text = text[len(self.text) :] if text.startswith(self.text) else "", text
        return piece


def _check_pair(model: PaliGemmaForConditionalGeneration, processor: PaliGemmaProcessor) -> None:
    """Refuse a processor made for another checkpoint: its prompts would be misread silently.

    The model's config is the one source of truth: `PaliGemmaProcessor.from_config` builds the
    processor it takes (and refuses a tokenizer whose ids are not the config's).
    """
    expected = PaliGemmaProcessor.from_config(model.config, processor.tokenizer)
    for name in ("image_size", "num_image_tokens"):
        value, needed = getattr(processor, name), getattr(expected, name)
        if value != needed:
            raise ValueError(
                f"the processor's {name} is {value} but the model's config needs {needed}; "
                "load both from the same checkpoint folder"
            )


def generate(
    model: PaliGemmaForConditionalGeneration,
    processor: PaliGemmaProcessor,
    images: ImageInput | Sequence[ImageInput],
    prompts: str | Sequence[str],
    max_new_tokens: int = 32,
    sampling: Sampling = Sampling.greedy(),
    stream: Callable[[int, str], None] | None = None,
) -> list[str]:
    """Answer each prompt about its image.

    Args:
        images, prompts: one image per prompt (a single image and prompt are fine too); an image is a file path, a PIL
            image, a numpy array [H, W(, C)] (channels last) or a torch tensor [(C,) H, W] (channels first), uint8 or
            uint16, and a list or tuple of them is a batch (see `pgemma.images`).
        max_new_tokens: the most tokens written per answer.
        sampling: how each token is chosen (default: greedy).
        stream: called as stream(row, text) with each new piece of a row's answer as it is written.
    Returns:
        one answer per prompt, without <eos>; <locNNNN> tokens are kept (detection answers).
    """
    _check_pair(model, processor)
    batch = processor(images, prompts)
    eos_id = processor.tokenizer.eos_id
    streamers = [TextStreamer(processor.tokenizer) for _ in range(batch.input_ids.shape[0])]
    done = [False] * len(streamers)
    tokens_per_step = generate_tokens(model, batch, max_new_tokens, sampling, vocab_size=processor.tokenizer.vocab_size)
    for tokens in tokens_per_step:
        for row, token in enumerate(tokens.tolist()):
            if done[row]:
                continue
            done[row] = token == eos_id
            piece = "" if done[row] else streamers[row].push(token)
            if piece and stream is not None:
                stream(row, piece)
    for row, streamer in enumerate(streamers):
        piece = streamer.flush()
        if piece and stream is not None:
            stream(row, piece)
    return [streamer.text for streamer in streamers]
