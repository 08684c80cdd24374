"""Fused projections: the layers that read the same input, as one matrix product.

Book: no chapter; ``benchmarks/README.md`` measures it. The model code keeps one ``nn.Linear`` per
checkpoint matrix, and uses a fused product only when ``fuse_projections`` has prepared one.

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
into it: no weight is stored twice, the state dict keeps its keys, and an optimizer step on
``q_proj.weight`` changes the stacked matrix too. The fused product runs only while autograd is off
(generation, evaluation) and while the layers still view the matrix: after ``model.to(...)`` moves
or casts the weights, the model falls back to the separate layers until it is fused again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Groups with more weights than this (e.g. 1024 x 1024) stay separate layers.
FUSE_MAX_WEIGHTS = 2**20


class FusedProjections:
    """The weights of ``layers`` stacked into one matrix; the layers' weights become views into it.

    Not an ``nn.Module``: it owns no Parameters (the layers keep theirs), so it adds nothing to the
    model's parameters or state dict.
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
            layer.weight = nn.Parameter(rows, requires_grad=layer.weight.requires_grad)
        self.layers = list(layers)
        self.view_pointers = [layer.weight.data_ptr() for layer in layers]
        self.linear: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.linear  # use_fast_linear may swap it

    def usable(self) -> bool:
        """True when no gradient is recorded and every layer's weight is still a view into ``weight``.

        False inside ``torch.compile``, which cannot read data pointers, and gains nothing from the
        stacked product (measured: it calls the separate products as fast).
        """
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return False
        for layer, pointer in zip(self.layers, self.view_pointers):
            if layer.weight.data_ptr() != pointer:
                return False
        return True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """float[..., in] -> float[..., sum of out_features]: the layers' outputs side by side."""
        return self.linear(x, self.weight)


def fuse_projections(model: nn.Module, max_weights: int = FUSE_MAX_WEIGHTS) -> nn.Module:
    """Stack q/k/v and gate/up of every Gemma layer of ``model`` whose group has at most
    ``max_weights`` weights (in place; returns ``model``).

    Call it after moving or casting the model, as the last step before generating.
    """
    from pgemma.gemma import GemmaAttention, GemmaMLP

    for module in model.modules():
        if isinstance(module, GemmaAttention):
            name, layers = "fused_qkv", [module.q_proj, module.k_proj, module.v_proj]
        elif isinstance(module, GemmaMLP):
            name, layers = "fused_gate_up", [module.gate_proj, module.up_proj]
        else:
            continue
        if sum(layer.weight.numel() for layer in layers) <= max_weights:
            setattr(module, name, FusedProjections(layers))
    return model


def fused_projections(model: nn.Module) -> list[FusedProjections]:
    """Every ``FusedProjections`` held by a module of ``model``."""
    return [value for module in model.modules() for value in vars(module).values()
            if isinstance(value, FusedProjections)]
