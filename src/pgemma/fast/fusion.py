"""Fused projections: the layers that read the same input, as one matrix product.

Book: no chapter; ``benchmarks/README.md`` measures it. ``pgemma.gemma`` keeps one ``nn.Linear`` per
checkpoint matrix; ``fuse_projections`` swaps each Gemma layer's attention and MLP for a subclass
that overrides one step, the projection: ``FusedGemmaAttention.project`` computes q, k and v as one
product, ``FusedGemmaMLP.gate_and_up`` the gate and up projections.

A Gemma layer multiplies the same normed activations by three matrices for the queries, keys and
values, and by two for the MLP's gate and up projections. Stacking each group's weights into one
matrix gives the same numbers with one product per group:

    [q; k; v] = x @ [W_q; W_k; W_v].T        x: (B, T, D), W_q: (N*H, D), W_k and W_v: (K*H, D)

While decoding one token on a CPU, each call costs microseconds of overhead and the matrices are
small, so fewer, larger products make a step faster. big_vision's Gemma stores its weights this way
(``qkv_einsum``, or ``q_einsum`` and a stacked ``kv_einsum`` when keys and values have fewer heads;
``gating_einsum``); the Hugging Face checkpoints keep them apart, and so do our modules, whose
names are the checkpoint keys.

Fusing pays where the products are small: a product of 2**20 float32 weights (4 MiB) already takes
about 100 us at memory speed, against a few microseconds saved per call. Larger groups stay apart
(``FUSE_MAX_WEIGHTS``): stacking them would also copy memory-mapped checkpoint weights into RAM.

``fuse_projections`` allocates each stacked matrix once and then makes the separate weights views
into it: the subclasses keep the layers and their Parameter objects (an optimizer made before still
holds them), no weight is stored twice, the state dict keeps its keys, and an optimizer step on
``q_proj.weight`` changes the stacked matrix too. The fused product runs only while autograd is off
(generation, evaluation) and while the layers still view the matrix: after ``model.to(...)`` moves
or casts the weights, the subclasses take the reference step (the separate layers) until the model
is fused again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from pgemma.config import GemmaConfig
from pgemma.gemma import GemmaAttention, GemmaMLP, GemmaModel
from pgemma.lora import LoRALinear

# Groups with more weights than this (e.g. 1024 x 1024) stay separate layers.
FUSE_MAX_WEIGHTS = 2**20

Module = TypeVar("Module", bound=nn.Module)


class FusedProjections:
    """The weights of ``layers`` stacked into one matrix; the layers' weights become views into it.

    Not an ``nn.Module``: it owns no Parameters (the layers keep theirs, the same objects), so it adds
    nothing to the model's parameters or state dict.
    """

    def __init__(self, layers: Sequence[nn.Linear]):
        if any(layer.bias is not None for layer in layers):
            raise ValueError("fused projections are for layers without bias, as in Gemma")
        widths = [layer.in_features for layer in layers]
        if len(set(widths)) != 1:
            raise ValueError(f"fused layers must read the same input width, got {widths}")
        sizes = [layer.out_features for layer in layers]
        self.weight = torch.cat([layer.weight.detach() for layer in layers])  # (sum of out_features, in)
        for layer, rows in zip(layers, self.weight.split(sizes)):
            layer.weight.data = rows  # the same Parameter, its data now a view into the stacked matrix
        self.view_pointers = [layer.weight.data_ptr() for layer in layers]
        self.linear: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.linear  # use_fast_linear may swap it

    def usable(self, layers: Sequence[nn.Linear]) -> bool:
        """True when no gradient is recorded and the weights of ``layers`` (those stacked, in order)
        still view ``weight``.

        False inside ``torch.compile``, which cannot read data pointers, and gains nothing from the
        stacked product (measured: it calls the separate products as fast).
        """
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return False
        return [layer.weight.data_ptr() for layer in layers] == self.view_pointers

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """float[..., in] -> float[..., sum of out_features]: the layers' outputs side by side."""
        return self.linear(x, self.weight)


def _same_layers(cls: type[Module], module: nn.Module, *args: object) -> Module:
    """A ``cls(*args)`` holding ``module``'s layers (their Parameters, not copies), in its mode."""
    with torch.device("meta"):  # shapes only: the layers come from `module`
        swapped = cls(*args)
    for name, layer in module.named_children():
        setattr(swapped, name, layer)
    swapped.training = module.training
    return swapped


class FusedGemmaAttention(GemmaAttention):
    """``GemmaAttention`` whose ``project`` computes q, k and v as one matrix product."""

    qkv: FusedProjections

    @classmethod
    def from_attention(cls, attention: GemmaAttention, config: GemmaConfig) -> FusedGemmaAttention:
        """``attention`` (made from ``config``) with its q/k/v weights stacked; same layers and Parameters."""
        fused = _same_layers(cls, attention, config, attention.use_sdpa)
        fused.scale, fused.softcap = attention.scale, attention.softcap  # Gemma 2's differ from Gemma's
        fused.qkv = FusedProjections([fused.q_proj, fused.k_proj, fused.v_proj])
        return fused

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``GemmaAttention.project``, from one product when ``FusedProjections.usable``."""
        if not self.qkv.usable([self.q_proj, self.k_proj, self.v_proj]):
            return super().project(x)
        batch, length, _ = x.shape
        heads, kv_heads = self.num_heads, self.num_kv_heads
        qkv = self.qkv(x).view(batch, length, heads + 2 * kv_heads, self.head_dim)  # (B, T, N+2K, H)
        qkv = qkv.transpose(1, 2)  # (B, N+2K, T, H)
        return qkv[:, :heads], qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :]  # (B, N or K, T, H)


class FusedGemmaMLP(GemmaMLP):
    """``GemmaMLP`` whose ``gate_and_up`` computes both projections as one matrix product."""

    gate_up: FusedProjections

    @classmethod
    def from_mlp(cls, mlp: GemmaMLP, config: GemmaConfig) -> FusedGemmaMLP:
        """``mlp`` (made from ``config``) with its gate/up weights stacked; same layers and Parameters."""
        fused = _same_layers(cls, mlp, config)
        fused.gate_up = FusedProjections([fused.gate_proj, fused.up_proj])
        return fused

    def gate_and_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``GemmaMLP.gate_and_up``, from one product when ``FusedProjections.usable``."""
        if not self.gate_up.usable([self.gate_proj, self.up_proj]):
            return super().gate_and_up(x)
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (B, T, F) each
        return gate, up


def _weights(*layers: nn.Linear) -> int:
    return sum(layer.weight.numel() for layer in layers)


def fuse_projections(model: nn.Module, max_weights: int = FUSE_MAX_WEIGHTS) -> nn.Module:
    """Swap the attention and the MLP of every Gemma layer of ``model`` for ``FusedGemmaAttention``
    and ``FusedGemmaMLP`` where the group (q/k/v, gate/up) has at most ``max_weights`` weights.

    Works in place and returns ``model``; Parameters, their names and the state dict are unchanged.
    Call it after moving or casting the model, as the last step before generating.

    Raises:
        ValueError: when the model holds LoRA adapters not merged yet: the stacked product reads the
            base weights only and would drop them (merge first with ``pgemma.lora.merge_lora``).
    """
    adapted = [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    if adapted:
        raise ValueError(
            f"{len(adapted)} layers carry LoRA adapters (e.g. {adapted[0]}); fused projections would "
            "drop them: call pgemma.lora.merge_lora(model) first"
        )
    for decoder in [module for module in model.modules() if isinstance(module, GemmaModel)]:
        for layer in decoder.layers:
            attention, mlp = layer.self_attn, layer.mlp
            if _weights(attention.q_proj, attention.k_proj, attention.v_proj) <= max_weights:
                layer.self_attn = FusedGemmaAttention.from_attention(attention, decoder.config)
            if _weights(mlp.gate_proj, mlp.up_proj) <= max_weights:
                layer.mlp = FusedGemmaMLP.from_mlp(mlp, decoder.config)
    return model


def fused_projections(model: nn.Module) -> list[FusedProjections]:
    """Every ``FusedProjections`` of the fused modules of ``model``."""
    found = []
    for module in model.modules():
        if isinstance(module, FusedGemmaAttention):
            found.append(module.qkv)
        elif isinstance(module, FusedGemmaMLP):
            found.append(module.gate_up)
    return found
