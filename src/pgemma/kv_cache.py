"""The key/value cache: an explicit, preallocated object that the decoder takes and returns.

Book chapter: "The KV-cache".

During generation every new token attends to the keys and values of all tokens before it. Those
do not change, so each layer stores them once instead of recomputing the whole prefix per token.

The cache is data, not state hidden in the modules: ``KVCache.empty`` allocates room for
``max_length`` tokens per layer, the decoder writes the new tokens' keys and values after the
``length`` already stored, and returns ``cache.advance(T)``, a cache with the longer length. The
buffers are shared between the old and the new object (no copy), so keep using the returned one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pgemma.config import GemmaConfig


@dataclass(frozen=True)
class KVCache:
    """Per-layer keys and values, float[B, K, S_max, H], of which the first ``length`` are filled."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
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
        shape = (batch_size, config.num_key_value_heads, max_length, config.head_dim)  # (B, K, S_max, H)
        layers = range(config.num_hidden_layers)
        try:
            return cls(
                keys=tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in layers),
                values=tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in layers),
            )
        except (RuntimeError, MemoryError) as error:  # torch's out-of-memory errors are RuntimeErrors
            needed = cls.bytes_needed(config, batch_size, max_length, dtype)
            raise MemoryError(
                f"cannot allocate a KV cache of {needed:,} bytes ({needed / 2**30:.1f} GiB) on {device} for "
                f"{batch_size} rows of {max_length} tokens; lower max_length or batch_size ({error})"
            ) from error

    @staticmethod
    def bytes_needed(config: GemmaConfig, batch_size: int, max_length: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes ``empty`` allocates: keys and values, each float[B, K, S_max, H], in every layer.

        2 (keys and values) * layers * B * K * S_max * H * bytes per number.
        """
        per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * dtype.itemsize
        return per_token * batch_size * max_length

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    @property
    def max_length(self) -> int:
        return self.keys[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new tokens' keys and values after the cached ones and return all of them.

        Args:
            layer: index of the decoder layer.
            k, v: float[B, K, T, H] for the T new tokens (keys already rotated by RoPE).
        Returns:
            (keys, values), each float[B, K, length + T, H], views into the buffers.
        """
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(
                f"the KV cache holds {self.max_length} tokens; {self.length} are stored and "
                f"{k.shape[2]} more do not fit; allocate a longer one with KVCache.empty"
            )
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]  # (B, K, S, H)

    def advance(self, num_tokens: int) -> KVCache:
        """The same buffers, with ``num_tokens`` more counted as filled (call once per forward)."""
        return replace(self, length=self.length + num_tokens)
