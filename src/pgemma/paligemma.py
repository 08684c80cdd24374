"""PaliGemma: SigLIP sees the image, a linear projector translates, Gemma reads and writes.

Book chapter: "Assembling PaliGemma" (Beyer et al. 2024, section 3). PaliGemma 2 (Steiner et al.
2024) is the same model with a Gemma 2 decoder (``gemma2.py``), chosen by the config's class.

The forward pass is split into the steps the chapter names (as big_vision's ``embed_image``,
``embed_text``, ``embed_image_and_text``), and its arguments mean what they mean in transformers'
``PaliGemmaForConditionalGeneration``:

- ``input_ids`` int[B, T]: the prompt, ``<image>`` * P + BOS + prefix + "\\n" (+ suffix + EOS),
  left-padded in batches;
- ``attention_mask`` int[B, S]: 1 = real token, 0 = padding, over cached + new tokens;
- ``token_type_ids`` int[B, T]: 0 = image or prefix (attended both ways), 1 = suffix (causal);
- ``position_ids`` int[B, T]: RoPE positions, by default ``cache length + 1, + 2, ...``
  (transformers' PaliGemma counts from 1, ignoring padding);
- ``labels`` int[B, T]: next-token targets, -100 where no loss is wanted (image and prefix).

Parameter names mirror the hub checkpoint keys (``vision_tower.vision_model.*``,
``multi_modal_projector.linear.*``, ``language_model.model.*``), so ``checkpoint.py`` only renames.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pgemma.config import IGNORE_INDEX, Gemma2Config, PaliGemmaConfig
from pgemma.gemma import GemmaForCausalLM
from pgemma.gemma2 import Gemma2ForCausalLM
from pgemma.kv_cache import KVCache
from pgemma.masks import decoder_mask
from pgemma.siglip import SiglipVisionModel


class MultiModalProjector(nn.Module):
    """One linear layer (with bias) from SigLIP's width to Gemma's."""

    def __init__(self, config: PaliGemmaConfig):
        super().__init__()
        self.linear = nn.Linear(config.vision_config.hidden_size, config.projection_dim)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """float[B, P, D_vision] -> float[B, P, D]."""
        return self.linear(image_features)


class PaliGemmaHiddenStates(NamedTuple):
    """Intermediate activations, returned when ``output_hidden_states=True`` (for inspection)."""

    vision: list[torch.Tensor]  # patch embeddings, then every SigLIP layer: float[B, P, D_vision]
    image_features: torch.Tensor | None  # projector output, float[B, P, D]
    decoder: list[torch.Tensor]  # decoder input (merged and scaled), then every layer: float[B, T, D]


class PaliGemmaAttentions(NamedTuple):
    """Attention weights, returned when ``output_attentions=True`` (rows sum to 1; for inspection)."""

    vision: list[torch.Tensor]  # every SigLIP layer: float[B_images, N_vision, P, P] (none without pixels)
    decoder: list[torch.Tensor]  # every Gemma layer: float[B, N, T, S]


class PaliGemmaOutput(NamedTuple):
    logits: torch.Tensor  # float[B, T, V]
    kv_cache: KVCache | None  # the cache passed in, advanced by T; None if none was passed
    loss: torch.Tensor | None  # mean cross-entropy of the next token, when labels are given
    hidden_states: PaliGemmaHiddenStates | None = None
    attentions: PaliGemmaAttentions | None = None


class PaliGemmaForConditionalGeneration(nn.Module):
    """The whole model. ``use_sdpa=True`` uses PyTorch's fused attention kernel in both towers."""

    def __init__(self, config: PaliGemmaConfig, use_sdpa: bool = False):
        super().__init__()
        self.config = config
        self.vision_tower = SiglipVisionModel(config.vision_config, use_sdpa)
        self.multi_modal_projector = MultiModalProjector(config)
        decoder_class = Gemma2ForCausalLM if isinstance(config.text_config, Gemma2Config) else GemmaForCausalLM
        self.language_model = decoder_class(config.text_config, use_sdpa)

    @property
    def num_image_tokens(self) -> int:
        """P: the prompt must hold this many ``<image>`` tokens per image."""
        return self.config.num_image_tokens

    def embed_image(
        self, pixel_values: torch.Tensor, attentions: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """float[B, C, I, I] in [-1, 1] -> (image features float[B, P, D], SigLIP's hidden states).

        ``attentions``: a list to append SigLIP's attention weights to (``SiglipEncoder.forward``).
        """
        dtype = self.multi_modal_projector.linear.weight.dtype
        features, hidden_states = self.vision_tower(pixel_values.to(dtype), attentions)  # (B, P, D_vision)
        return self.multi_modal_projector(features), hidden_states  # (B, P, D)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """int[B, T] -> float[B, T, D], not yet scaled (the decoder multiplies by sqrt(D))."""
        return self.language_model.model.embed_tokens(input_ids)

    def merge_image_and_text(
        self, input_ids: torch.Tensor, text_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Put the image features, in order, where ``input_ids`` holds ``<image>``.

        Args:
            input_ids: int[B, T] with P ``<image>`` tokens per image.
            text_embeds: float[B, T, D] from ``embed_text``.
            image_features: float[B_images, P, D] from ``embed_image``.
        Returns:
            float[B, T, D].
        Note: the image features are divided by sqrt(D) here so that the decoder's sqrt(D) scaling
        leaves them as the projector made them (big_vision, transformers < 5.4). transformers >= 5.4
        scales only the text embeddings instead: the same up to rounding (about 1e-7 in float32, a
        few steps in bfloat16, none when sqrt(D) is a power of two).
        """
        merged = text_embeds.clone()
        image_features = image_features / self.config.text_config.hidden_size**0.5
        # Boolean indexing walks the rows in order, so image i fills the i-th block of P <image> slots.
        image_features = image_features.reshape(-1, merged.shape[-1])  # (B_images*P, D)
        merged[input_ids == self.config.image_token_index] = image_features
        return merged

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        logits_to_keep: int | None = None,
        output_attentions: bool = False,
    ) -> PaliGemmaOutput:
        """Logits for every input position (see the module docstring for the arguments).

        Prefill: pass the whole prompt with ``pixel_values`` and an empty cache
        (``KVCache.empty``). Decode: pass the new token(s) with the returned cache and an
        ``attention_mask`` covering cached + new tokens. ``logits_to_keep=1`` returns the logits
        of the last position only, float[B, 1, V] (what generation reads; not with ``labels``).
        ``output_attentions=True`` also returns every layer's attention weights, computed on the
        explicit path for this call even when the model uses SDPA (the logits are the same up to
        rounding).
        Note: without ``token_type_ids`` attention is causal everywhere, as in transformers. With a
        cache, ``token_type_ids`` apply to the new tokens (transformers ignores them after the first
        step; identical for one new token per row).
        """
        cache_length = 0 if kv_cache is None else kv_cache.length
        self._check_inputs(input_ids, pixel_values, attention_mask, token_type_ids, position_ids, kv_cache, labels)
        batch, length = input_ids.shape
        # Lists that every attention layer appends its weights to; None: the weights are not formed.
        vision_attentions, decoder_attentions = ([], []) if output_attentions else (None, None)
        inputs_embeds = self.embed_text(input_ids)  # (B, T, D)
        image_features, vision_states = None, []
        if pixel_values is not None:
            image_features, vision_states = self.embed_image(pixel_values, vision_attentions)  # (B, P, D)
            inputs_embeds = self.merge_image_and_text(input_ids, inputs_embeds, image_features)
        if position_ids is None:
            # transformers' PaliGemma: 1, 2, 3... continuing after the cache, the same in every row.
            position_ids = torch.arange(length, device=input_ids.device) + cache_length + 1
        position_ids = position_ids.expand(batch, length)  # (B, T)
        mask = decoder_mask(
            length, cache_length + length, attention_mask, token_type_ids, batch, input_ids.device
        )  # (B, 1, T, S)
        sliding_mask = self.sliding_mask(length, cache_length + length, attention_mask, token_type_ids, batch)
        if labels is not None and logits_to_keep is not None:
            raise ValueError("the loss needs the logits of every position: pass logits_to_keep=None with labels")
        logits, kv_cache, decoder_states = self.language_model(
            inputs_embeds, mask, position_ids, kv_cache, logits_to_keep, decoder_attentions, sliding_mask
        )
        loss = None
        if labels is not None:
            # Position t predicts token t + 1: drop the last logit and the first label.
            loss = F.cross_entropy(
                logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
            )
        hidden_states = None
        if output_hidden_states:
            hidden_states = PaliGemmaHiddenStates(vision_states, image_features, decoder_states)
        attentions = PaliGemmaAttentions(vision_attentions, decoder_attentions) if output_attentions else None
        return PaliGemmaOutput(logits, kv_cache, loss, hidden_states, attentions)

    @torch.inference_mode()
    def decode_step(
        self, new_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor, kv_cache: KVCache
    ) -> PaliGemmaOutput:
        """The generation loop's step: one new token per row after the cache, logits of that token only.

        Args:
            new_ids: int[B, 1], the tokens just chosen.
            attention_mask: int[B, S] over cached + new tokens (S = kv_cache.length + 1), or None
                when no row has padding: the new token then sees every key and needs no mask.
            position_ids: int[B, 1], their RoPE positions.
            kv_cache: the cache after the prompt and the earlier steps.
        Returns:
            logits float[B, 1, V] and the cache advanced by one.
        Note: computes exactly ``forward(new_ids, None, attention_mask, ones, position_ids, kv_cache,
        logits_to_keep=1)``, minus its input checks: the loop made these tensors itself. Runs in
        ``torch.inference_mode``: generation never needs gradients.
        """
        inputs_embeds = self.embed_text(new_ids)  # (B, 1, D)
        mask = None
        if attention_mask is not None:
            mask = decoder_mask(1, attention_mask.shape[1], attention_mask)  # (B, 1, 1, S): every real key
        batch, key_length = new_ids.shape[0], kv_cache.length + 1
        sliding_mask = self.sliding_mask(1, key_length, attention_mask, None, batch)  # (B, 1, 1, S) or None
        logits, kv_cache, _ = self.language_model(
            inputs_embeds, mask, position_ids, kv_cache, logits_to_keep=1, sliding_mask=sliding_mask
        )
        return PaliGemmaOutput(logits, kv_cache, None)

    def sliding_mask(
        self,
        query_length: int,
        key_length: int,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        batch_size: int,
    ) -> torch.Tensor | None:
        """The mask of a Gemma 2 decoder's sliding-window layers, bool[B, 1, T, S]; None for Gemma.

        As ``masks.decoder_mask`` with the same arguments, the causal part limited to the last
        ``sliding_window`` keys of each query (the prefix still sees all of itself).
        """
        text = self.config.text_config
        if not isinstance(text, Gemma2Config):
            return None
        device = self.multi_modal_projector.linear.weight.device
        return decoder_mask(
            query_length, key_length, attention_mask, token_type_ids, batch_size, device, text.sliding_window
        )

    def _check_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        kv_cache: KVCache | None,
        labels: torch.Tensor | None,
    ) -> None:
        """Refuse inputs that would otherwise fail deep inside, or silently compute nonsense."""
        config, text = self.config, self.config.text_config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype.is_floating_point or input_ids.ndim != 2:
            raise TypeError(
                "input_ids must be an integer tensor of shape (batch, length), got "
                f"{getattr(input_ids, 'dtype', type(input_ids))} {tuple(getattr(input_ids, 'shape', ()))}"
            )
        batch, length = input_ids.shape
        if length == 0:
            raise ValueError("input_ids is empty: pass at least one token per row")
        smallest, largest = (value.item() for value in torch.aminmax(input_ids))
        if smallest < 0 or largest >= text.vocab_size:
            raise ValueError(
                f"input_ids must be in [0, {text.vocab_size}) (the vocabulary size), "
                f"got values from {smallest} to {largest}"
            )
        cache_length = 0 if kv_cache is None else kv_cache.length
        if cache_length + length > text.max_position_embeddings:
            raise ValueError(
                f"{cache_length} cached + {length} new tokens exceed the context of "
                f"max_position_embeddings={text.max_position_embeddings}"
            )
        if kv_cache is not None and kv_cache.batch_size != batch:
            raise ValueError(f"kv_cache was made for batch size {kv_cache.batch_size}, input_ids has {batch}")
        expected = {
            "attention_mask": (attention_mask, (batch, cache_length + length)),
            "token_type_ids": (token_type_ids, (batch, length)),
            "labels": (labels, (batch, length)),
        }
        for name, (tensor, shape) in expected.items():
            if tensor is not None and tuple(tensor.shape) != shape:
                what = " (cached + new tokens)" if name == "attention_mask" and cache_length else ""
                raise ValueError(f"{name} must have shape {shape}{what}, got {tuple(tensor.shape)}")
        if position_ids is not None and tuple(position_ids.shape) not in ((batch, length), (1, length)):
            raise ValueError(f"position_ids must have shape {(batch, length)}, got {tuple(position_ids.shape)}")
        image_tokens = (input_ids == config.image_token_index).sum(dim=1)  # (B,)
        if pixel_values is None:
            if image_tokens.any():
                raise ValueError(
                    f"input_ids hold {image_tokens.sum().item()} <image> tokens but pixel_values "
                    "is None; pass the images"
                )
            return
        vision = config.vision_config
        image_shape = (vision.num_channels, vision.image_size, vision.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != image_shape:
            raise ValueError(
                f"pixel_values must have shape (images, {', '.join(map(str, image_shape))}), got "
                f"{tuple(pixel_values.shape)}; resize and normalize images with the processor"
            )
        per_image = self.num_image_tokens
        if (image_tokens % per_image).any() or image_tokens.sum() != pixel_values.shape[0] * per_image:
            raise ValueError(
                f"each image needs {per_image} <image> tokens (id {config.image_token_index}) "
                f"in its row; got {image_tokens.tolist()} per row for {pixel_values.shape[0]} "
                "image(s)"
            )
