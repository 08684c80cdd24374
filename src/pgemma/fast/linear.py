"""Fast CPU matrix products for inference: an opt-in swap of the model's ``nn.Linear`` layers.

Book: no chapter; ``benchmarks/README.md`` measures it. The model code (``pgemma.gemma``,
``pgemma.siglip``) keeps plain ``nn.Linear``.

On the CPU, PyTorch computes a float32 ``nn.Linear`` with its BLAS library (Intel MKL in the x86
wheels). PyTorch also ships oneDNN (``torch.backends.mkldnn``), whose matrix product it uses for
bfloat16 but not for float32. Measured on the benchmark machine (AMD EPYC, 2 cores, torch 2.13):

    x @ W.T, W 2048 x 2048              MKL       oneDNN    gemv
    8 rows, 1 thread                    1.79 ms   1.01 ms
    64 rows, 1 thread                   6.53 ms   3.12 ms
    1 row, W 16384 x 2048, 2 threads    5.8 ms    3.5 ms    2.7-2.9 ms   (MKL's one-row product uses one core)

A one-row product, the decoding of one token, reads each weight once for one multiply-add: its
speed is the memory's. ``pgemma.fast.gemv`` streams the weight at nearly the speed of reading it
(compiled by ``torch.compile``); products of several rows reuse each weight and go to oneDNN. For
small products the library call costs more than the arithmetic (about 13 us against 2 us for one
row times 128 x 128), so the choice is made per call:

    one row, at least GEMV_MIN_WEIGHTS weights                      ->  pgemma.fast.gemv
    rows x out_features x in_features >= ONEDNN_MIN_MULTIPLY_ADDS   ->  oneDNN
    otherwise, or when a gradient is needed, or not float32 on CPU  ->  torch.nn.functional.linear

The kernels agree up to rounding (they add the products in another order: about 1e-6 relative), so
``use_fast_linear`` is opt-in and the reference-exact default stays ``F.linear``. Neither oneDNN's
operator nor ``gemv`` has a backward, so a layer falls back to ``F.linear`` whenever autograd
records. The swapped layers keep their Parameters (no copy, a tied output head stays tied) and
their names: the state dict and checkpoints are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pgemma.fast.fusion import fused_projections
from pgemma.fast.gemv import gemv

# 2**20 multiply-adds (one row x 1024 x 1024, 8 rows x 512 x 256, 64 rows x 128 x 128): about where
# the two libraries break even on the benchmark machine with one thread; above it oneDNN wins.
ONEDNN_MIN_MULTIPLY_ADDS = 2**20
# Layers with fewer weights than this (512 x 512) are not swapped: their products gain little even
# for a long prompt, and the tests below would cost every one-row decode step a little time.
SWAP_MIN_WEIGHTS = 2**18
# One-row products of at least this many weights (512 x 512) go to pgemma.fast.gemv: from there on it reads
# the weight faster than oneDNN (29 against 28 GB/s at 512 x 512, 37 against 32 at 256 x 2048).
GEMV_MIN_WEIGHTS = 2**18


def onednn_available() -> bool:
    """True when this PyTorch build has oneDNN and its linear operator."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _inference_on_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """float32 CPU tensors and no gradient to record: what oneDNN and gemv can compute."""
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    return not needs_grad and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32


def use_onednn_for(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x @ weight.T`` is large enough, and of the right kind, to go through oneDNN."""
    multiply_adds = x.numel() * weight.shape[0]  # rows x in_features x out_features
    if multiply_adds < ONEDNN_MIN_MULTIPLY_ADDS:  # first: the cheapest test, and the usual answer
        return False
    return _inference_on_cpu(x, weight)


def use_gemv_for(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``x @ weight.T`` is one row times a large enough matrix, of the right kind, for gemv."""
    if x.numel() != weight.shape[1] or weight.numel() < GEMV_MIN_WEIGHTS:  # one row, a large matrix
        return False
    return weight.is_contiguous() and _inference_on_cpu(x, weight)


# A custom operator, so that torch.compile (pgemma.fast.compiled) calls it as it is: it cannot compile
# oneDNN's operator on a plain weight, and would otherwise split the graph around every such call.
@torch.library.custom_op("pgemma::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` computed by oneDNN: float[..., in] -> float[..., out]."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@onednn_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The output's shape and dtype, all torch.compile needs to know while tracing."""
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` by gemv, oneDNN or ``F.linear``, as the module's docstring says."""
    if use_gemv_for(x, weight):
        out = gemv(x, weight)
        if out is not None:  # None: this shape could not be compiled, and the next choice applies
            return out if bias is None else out + bias
    if use_onednn_for(x, weight):
        return onednn_linear(x, weight, bias)
    return F.linear(x, weight, bias)


class FastLinear(nn.Linear):
    """``nn.Linear`` that computes its large float32 CPU products with ``linear`` (inference only)."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> FastLinear:
        """The same layer, sharing ``linear``'s weight and bias Parameters."""
        with torch.device("meta"):  # shapes only: the Parameters come from `linear`
            layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        layer.weight, layer.bias = linear.weight, linear.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def use_fast_linear(model: nn.Module) -> nn.Module:
    """Swap each ``nn.Linear`` with at least ``SWAP_MIN_WEIGHTS`` weights for a ``FastLinear``.

    Fused projections (``pgemma.fast.fusion``, apply them first) of that size compute through ``linear``.
    Works in place and returns ``model``; does nothing when PyTorch was built without oneDNN.
    The first one-row product of each large weight shape compiles ``pgemma.fast.gemv`` (about a second).
    """
    if not onednn_available():
        return model
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Linear and child.weight.numel() >= SWAP_MIN_WEIGHTS:
                setattr(parent, name, FastLinear.from_linear(child))
    for fused in fused_projections(model):
        if fused.weight.numel() >= SWAP_MIN_WEIGHTS:
            fused.linear = linear
    return model
