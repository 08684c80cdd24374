"""The Gemma 2 decoder of PaliGemma 2: Gemma's parts, with four changes.

Book chapter: "Assembling PaliGemma" (Gemma Team 2024b, "Gemma 2", section 2; Steiner et al. 2024,
"PaliGemma 2"). Everything not listed here is ``gemma.py``'s, reused, not copied:

1. two more norms per layer: each sub-block's output is normed before the residual add
   (``post_attention_layernorm`` after attention, ``post_feedforward_layernorm`` after the MLP), and
   the MLP's input norm is called ``pre_feedforward_layernorm``. Careful: in Gemma,
   ``post_attention_layernorm`` is the MLP's input norm; the names mirror the checkpoint keys;
2. attention scores scaled by ``query_pre_attn_scalar ** -0.5`` and soft-capped by
   ``attn_logit_softcapping`` (``attention.soft_cap``); SDPA cannot cap, so a model built with
   ``use_sdpa=True`` still computes these layers on the explicit path;
3. the layers ``layer_types`` marks ``"sliding_attention"`` attend through a window of the last
   ``sliding_window`` keys (the mask ``masks.decoder_mask(..., sliding_window=W)``, given as
   ``sliding_mask``), and the cache keeps only that window for them (``kv_cache.KVCache``);
4. the output logits soft-capped by ``final_logit_softcapping``.
"""

import torch
from torch import nn

from pgemma.attention import soft_cap
from pgemma.config import Gemma2Config
from pgemma.gemma import GemmaAttention, GemmaForCausalLM, GemmaMLP, GemmaModel
from pgemma.kv_cache import KVCache
from pgemma.norms import GemmaRMSNorm


class Gemma2Attention(GemmaAttention):
    """``GemmaAttention`` with Gemma 2's scale and soft-cap of the scores."""

    def __init__(self, config: Gemma2Config, use_sdpa: bool = False):
        super().__init__(config, use_sdpa)
        self.scale = config.query_pre_attn_scalar**-0.5
        self.softcap = config.attn_logit_softcapping


class Gemma2DecoderLayer(nn.Module):
    """Norms around both sub-blocks: x + norm(attn(norm(x))), then x + norm(mlp(norm(x)))."""

    def __init__(self, config: Gemma2Config, use_sdpa: bool = False):
        super().__init__()
        self.input_layernorm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Gemma2Attention(config, use_sdpa)
        self.post_attention_layernorm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = GemmaMLP(config)
        self.post_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)

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
        attended = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache, layer, attentions)
        x = x + self.post_attention_layernorm(attended)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma2Model(GemmaModel):
    """``GemmaModel`` with Gemma 2 layers, sliding-window or full as ``config.layer_types`` says."""

    config: Gemma2Config

    def make_layer(self, config: Gemma2Config, index: int, use_sdpa: bool) -> nn.Module:
        return Gemma2DecoderLayer(config, use_sdpa)

    def is_sliding(self, index: int) -> bool:
        return self.config.is_sliding(index)


class Gemma2ForCausalLM(GemmaForCausalLM):
    """``GemmaForCausalLM`` on ``Gemma2Model``, its logits soft-capped by ``final_logit_softcapping``."""

    decoder_class = Gemma2Model

    def __init__(self, config: Gemma2Config, use_sdpa: bool = False):
        super().__init__(config, use_sdpa)
        self.final_logit_softcapping = config.final_logit_softcapping

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
        """As ``GemmaForCausalLM.forward``; ``sliding_mask`` is required once S exceeds the window."""
        key_length = inputs_embeds.shape[1] + (0 if kv_cache is None else kv_cache.length)  # S
        window = self.model.config.sliding_window
        if sliding_mask is None and key_length > window:
            raise ValueError(
                f"{key_length} keys exceed the sliding window of {window}: pass sliding_mask "
                "(masks.decoder_mask(..., sliding_window=config.sliding_window))"
            )
        logits, kv_cache, hidden_states = super().forward(
            inputs_embeds, mask, position_ids, kv_cache, logits_to_keep, attentions, sliding_mask
        )
        if self.final_logit_softcapping is not None:
            logits = soft_cap(logits, self.final_logit_softcapping)  # (B, T, V)
        return logits, kv_cache, hidden_states
