"""The Gemma decoder: a stack of pre-RMSNorm blocks with rotary, grouped-query attention.

Book chapters: "Transformer blocks" (each piece built on the page) and "Assembling PaliGemma"
(Gemma Team 2024, section 2; GeGLU: Shazeer 2020).

Module and attribute names mirror the checkpoint keys under ``language_model.``. The decoder takes
embeddings rather than token ids, because PaliGemma places image features among them first.
"""

import torch
import torch.nn.functional as F
from torch import nn

from pgemma.attention import attention
from pgemma.config import GemmaConfig
from pgemma.kv_cache import KVCache
from pgemma.norms import GemmaRMSNorm
from pgemma.rope import apply_rope, rope_cos_sin


class GemmaMLP(nn.Module):
    """GeGLU feed-forward: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, config: GemmaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def gate_and_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float[B, T, D] -> the gate and the up projections, float[B, T, F] each (F: intermediate size)."""
        return self.gate_proj(x), self.up_proj(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float[B, T, D] -> float[B, T, D]."""
        gate, up = self.gate_and_up(x)  # (B, T, F) each
        # The tanh approximation of GELU: what Gemma was trained with (config "gelu_pytorch_tanh").
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)  # (B, T, D)


class GemmaAttention(nn.Module):
    """Self-attention with N query heads sharing K key/value heads, RoPE on queries and keys.

    ``forward`` takes five steps: ``project`` the input to queries, keys and values; rotate queries
    and keys by their positions (chapter "RoPE: positions as rotations"); add the new keys and values
    to the cache (chapter "The KV-cache"); attend (``attention.attention``, chapter "Multi-head
    attention"); project the heads' outputs back to the model width.
    """

    def __init__(self, config: GemmaConfig, use_sdpa: bool = False):
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.use_sdpa = config.head_dim, use_sdpa
        # What the scores are multiplied by, and their soft-cap: Gemma 2 sets both differently.
        self.scale: float = config.head_dim**-0.5
        self.softcap: float | None = None
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """float[B, T, D] -> queries float[B, N, T, H], keys and values float[B, K, T, H]."""
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, N, T, H)
        k = self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, H)
        v = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, H)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        kv_cache: KVCache | None,
        layer: int,
        attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """float[B, T, D] -> float[B, T, D].

        Args:
            cos, sin: float[B, T, H] RoPE angles of the T new tokens.
            mask: bool[B, 1, T, S], S = cached + new tokens; None lets every query see every key.
            kv_cache: where this layer's earlier keys and values are (None: no cache, S = T).
            layer: this layer's index into the cache.
            attentions: a list to append this layer's attention weights float[B, N, T, S] to (rows
                sum to 1), computed on the explicit path even when the layer uses SDPA; None: not formed.
        """
        batch, length, _ = x.shape
        q, k, v = self.project(x)  # (B, N, T, H), (B, K, T, H), (B, K, T, H)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # rotated by their positions
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, K, S, H): the earlier tokens' too
        numbers = {"scale": self.scale, "softcap": self.softcap}
        if attentions is None:
            out = attention(q, k, v, mask, use_sdpa=self.use_sdpa, **numbers)  # (B, N, T, H)
        else:
            out, weights = attention(q, k, v, mask, return_weights=True, **numbers)  # (B, N, T, H), (B, N, T, S)
            attentions.append(weights)
        out = out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)  # (B, T, N*H)
        return self.o_proj(out)  # (B, T, D)


class GemmaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GemmaConfig, use_sdpa: bool = False):
        super().__init__()
        self.input_layernorm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = GemmaAttention(config, use_sdpa)
        self.post_attention_layernorm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = GemmaMLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        kv_cache: KVCache | None,
        layer: int,
        attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """float[B, T, D] -> float[B, T, D]; the arguments are ``GemmaAttention.forward``'s."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache, layer, attentions)
        return x + self.mlp(self.post_attention_layernorm(x))


class GemmaModel(nn.Module):
    """Token embeddings, the decoder stack and the final norm."""

    def __init__(self, config: GemmaConfig, use_sdpa: bool = False):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            self.make_layer(config, index, use_sdpa) for index in range(config.num_hidden_layers)
        )
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def make_layer(self, config: GemmaConfig, index: int, use_sdpa: bool) -> nn.Module:
        """Decoder layer ``index``: Gemma's layers are all alike (Gemma 2's are not, see gemma2.py)."""
        return GemmaDecoderLayer(config, use_sdpa)

    def is_sliding(self, index: int) -> bool:
        """Whether layer ``index`` takes the sliding-window mask: never in Gemma, every layer sees the whole context."""
        return False

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        kv_cache: KVCache | None = None,
        attentions: list[torch.Tensor] | None = None,
        sliding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache | None, list[torch.Tensor]]:
        """Run the decoder on embeddings (unscaled, as ``embed_tokens`` returns them).

        Args:
            inputs_embeds: float[B, T, D].
            mask: bool[B, 1, T, S] from ``masks.decoder_mask``, or None (every query sees every key).
            position_ids: int[B, T] RoPE positions.
            kv_cache: the cache holding S - T earlier tokens, or None.
            attentions: a list to append every layer's attention weights float[B, N, T, S] to, in
                order (the explicit path, even with SDPA; a sliding layer's S is its cache's
                ``key_length``); None: none are formed.
            sliding_mask: bool[B, 1, T, S] for the layers where ``is_sliding`` (Gemma 2), from
                ``masks.decoder_mask(..., sliding_window=W)``; unused by Gemma. With a cache, such a
                layer attends to the last ``kv_cache.key_length(layer, T)`` keys only (the cache
                keeps its window), and so to the mask's last columns: no query may see older keys.
        Returns:
            (final normed states float[B, T, D], the cache advanced by T (or None),
            hidden states: the scaled input, then every layer's output).
        """
        # Gemma scales embeddings by sqrt(D) (Gemma Team 2024; big_vision gemma.py). The factor is
        # rounded to the activation dtype first, as in the reference: in bfloat16 sqrt(2048) = 45.2548
        # becomes 45.25 (and Gemma 7B's sqrt(3072) = 55.4256 becomes 55.5).
        # https://github.com/huggingface/transformers/pull/29402
        normalizer = torch.tensor(self.config.hidden_size**0.5, dtype=inputs_embeds.dtype)
        x = inputs_embeds * normalizer
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        hidden_states = [x]
        for index, layer in enumerate(self.layers):
            layer_mask = sliding_mask if self.is_sliding(index) else mask
            if layer_mask is not None and kv_cache is not None:
                # A sliding layer's cache keeps only its window: its keys are the mask's last columns.
                layer_mask = layer_mask[..., -kv_cache.key_length(index, inputs_embeds.shape[1]) :]
            x = layer(x, cos, sin, layer_mask, kv_cache, index, attentions)
            hidden_states.append(x)
        if kv_cache is not None:
            kv_cache = kv_cache.advance(inputs_embeds.shape[1])
        return self.norm(x), kv_cache, hidden_states


class GemmaForCausalLM(nn.Module):
    """The decoder plus an output head that reuses the embedding matrix (weight tying)."""

    decoder_class: type[GemmaModel] = GemmaModel  # Gemma 2's is Gemma2Model

    def __init__(self, config: GemmaConfig, use_sdpa: bool = False):
        super().__init__()
        self.model = self.decoder_class(config, use_sdpa)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Make the head and the embedding one Parameter (Press & Wolf 2017); checkpoints store it once."""
        self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        kv_cache: KVCache | None = None,
        logits_to_keep: int | None = None,
        attentions: list[torch.Tensor] | None = None,
        sliding_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache | None, list[torch.Tensor]]:
        """As ``GemmaModel.forward``, but returns logits float[B, T, V] in place of the final states.

        ``logits_to_keep=n`` applies the output head to the last n positions only (logits
        float[B, n, V]): generation needs the last one, and the head is a V x D matrix product.
        """
        x, kv_cache, hidden_states = self.model(inputs_embeds, mask, position_ids, kv_cache, attentions, sliding_mask)
        if logits_to_keep is not None:
            x = x[:, -logits_to_keep:]  # (B, n, D)
        return self.lm_head(x), kv_cache, hidden_states
