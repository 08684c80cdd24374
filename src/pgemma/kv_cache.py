"""The key/value cache: an explicit, preallocated object that the decoder takes and returns.

Book chapters: "The KV-cache" and "PaliGemma 2" (sliding-window layers).

During generation every new token attends to the keys and values of all tokens before it. Those
do not change, so each layer stores them once instead of recomputing the whole prefix per token.

The cache is data, not state hidden in the modules: ``KVCache.empty`` allocates room for
``max_length`` tokens per layer, the decoder writes the new tokens' keys and values after the
``length`` already stored, and returns ``cache.advance(T)``, a cache with the longer length. The
buffers are shared between the old and the new object (no copy), so keep using the returned one.

Gemma 2's sliding-window layers (PaliGemma 2) read only the last ``sliding_window`` keys: once
the prompt is in, every later query sees just the keys in its window (the image+prefix block sees
itself both ways only among the prompt's own queries, during prefill, when its keys are all in
hand). So a sliding layer's buffer has ``min(max_length, sliding_window)`` slots and keeps the last
tokens, oldest first; ``update`` returns those and the new ones, and ``key_length`` says how many,
so that the layer's mask keeps the matching last columns. Example, a window of 3 after 5 tokens::

    full layer     slots 0 1 2 3 4 5 6 7    holds tokens 0 1 2 3 4 . . .
    sliding layer  slots 0 1 2              holds tokens 2 3 4
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pgemma.config import Gemma2Config, GemmaConfig


def layer_windows(config: GemmaConfig) -> tuple[int | None, ...]:
    """Per decoder layer, the window W of a Gemma 2 sliding-window layer, or None: it sees every key."""
    layers = range(config.num_hidden_layers)
    if not isinstance(config, Gemma2Config):
        return tuple(None for _ in layers)
    return tuple(config.sliding_window if config.is_sliding(index) else None for index in layers)


def layer_slots(config: GemmaConfig, max_length: int) -> tuple[int, ...]:
    """Per decoder layer, the tokens its buffer holds: ``max_length``, or at most the window W."""
    return tuple(max_length if window is None else min(max_length, window) for window in layer_windows(config))


@dataclass(frozen=True)
class KVCache:
    """Per-layer keys and values, float[B, K, slots, H]: a full layer's first ``length`` slots are
    filled, a sliding layer's first ``min(length, W)``, its last tokens."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    max_length: int  # the tokens the cache counts, prompt + generated
    windows: tuple[int | None, ...]  # per layer: W for a sliding-window layer, None for a full one
    length: int = 0

    @classmethod
    def empty(
        cls,
        config: GemmaConfig,
        batch_size: int,
        max_length: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> KVCache:
        """Allocate room for ``max_length`` tokens (prompt + generated) in every decoder layer.

        A sliding-window layer (Gemma 2) gets ``min(max_length, sliding_window)`` slots.
        Raises MemoryError, naming the bytes asked for, if the device cannot hold the buffers.
        """
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if max_length > config.max_position_embeddings:
            raise ValueError(
                f"max_length ({max_length}) exceeds the context of "
                f"max_position_embeddings={config.max_position_embeddings}"
            )
        shapes = [
            (batch_size, config.num_key_value_heads, slots, config.head_dim)  # (B, K, slots, H)
            for slots in layer_slots(config, max_length)
        ]
        try:
            return cls(
                keys=tuple(torch.zeros(shape, dtype=dtype, device=device) for shape in shapes),
                values=tuple(torch.zeros(shape, dtype=dtype, device=device) for shape in shapes),
                max_length=max_length,
                windows=layer_windows(config),
            )
        except (RuntimeError, MemoryError) as error:  # torch's out-of-memory errors are RuntimeErrors
            needed = cls.bytes_needed(config, batch_size, max_length, dtype)
            raise MemoryError(
                f"cannot allocate a KV cache of {needed:,} bytes ({needed / 2**30:.1f} GiB) on {device} for "
                f"{batch_size} rows of {max_length} tokens; lower max_length or batch_size ({error})"
            ) from error

    @staticmethod
    def bytes_needed(config: GemmaConfig, batch_size: int, max_length: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes ``empty`` allocates: keys and values, each float[B, K, slots, H], in every layer.

        2 (keys and values) * B * K * H * bytes per number * the slots of all layers, where a layer
        has ``max_length`` slots, a sliding-window layer ``min(max_length, sliding_window)``.
        """
        per_slot = 2 * config.num_key_value_heads * config.head_dim * dtype.itemsize
        return per_slot * batch_size * sum(layer_slots(config, max_length))

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def key_length(self, layer: int, num_new: int) -> int:
        """How many keys ``update`` returns for ``num_new`` new tokens: the last columns of the mask."""
        window = self.windows[layer]
        stored = self.length if window is None else min(self.length, window)
        return stored + num_new

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new tokens' keys and values after the cached ones and return all of them.

        Args:
            layer: index of the decoder layer.
            k, v: float[B, K, T, H] for the T new tokens (keys already rotated by RoPE).
        Returns:
            (keys, values), each float[B, K, key_length(layer, T), H]: every token so far in a full
            layer (views into the buffers); in a sliding layer the last W cached ones and the T new
            ones, of which the buffer keeps the last W.
        """
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(
                f"the KV cache holds {self.max_length} tokens; {self.length} are stored and "
                f"{k.shape[2]} more do not fit; allocate a longer one with KVCache.empty"
            )
        window = self.windows[layer]
        if window is None:
            self.keys[layer][:, :, self.length : end] = k
            self.values[layer][:, :, self.length : end] = v
            return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]  # (B, K, S, H)
        stored = min(self.length, window)
        keys = torch.cat([self.keys[layer][:, :, :stored], k], dim=2)  # (B, K, stored + T, H), oldest first
        values = torch.cat([self.values[layer][:, :, :stored], v], dim=2)
        kept = min(keys.shape[2], window)  # the next queries' window
        self.keys[layer][:, :, :kept] = keys[:, :, -kept:]
        self.values[layer][:, :, :kept] = values[:, :, -kept:]
        return keys, values

    def advance(self, num_tokens: int) -> KVCache:
        """The same buffers, with ``num_tokens`` more counted as filled (call once per forward)."""
        return replace(self, length=self.length + num_tokens)
