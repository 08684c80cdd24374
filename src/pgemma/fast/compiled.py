"""The decoder compiled by ``torch.compile``: generation without Python's cost per operation.

Book: no chapter; ``benchmarks/README.md`` measures it. The model code is the same, run differently.

Decoding one token of a small model is about 200 small PyTorch operations (norms, RoPE, cache
writes, attention, GeGLU, residual additions), each a few microseconds of Python and dispatch
around far less arithmetic. ``compile_decoder`` hands the decoder to ``torch.compile``, which traces
it into a graph once, fuses the elementwise operations into a few C++ loops and, with
``cpp_wrapper``, calls them from C++ instead of Python. Measured on the shipped model (benchmark
machine, two threads, greedy, same tokens): 3,560 tokens/s at batch 1 and 14,980 at batch 8, against
1,970 and 9,870 for the same model eager with ``fuse_projections`` and ``use_fast_linear``.

Matrix products stay library calls. With ``pgemma.fast.linear``, one-row products become the
compiler's own fused loop (``pgemma.fast.gemv``), and oneDNN's products run as they are between
compiled pieces; stacked projections (``pgemma.fast.fusion``) are not used inside the compiled graph,
which is as fast without them.

``dynamic=True`` lets one graph serve every prompt and cache length, and batch sizes above one.
The first prefill and the first decode step of each kind compile: 15-30 s on the benchmark machine
the first time, about 5 s once PyTorch's on-disk cache holds the work. Compiling needs a C++
compiler. Results equal the eager model's up to rounding (a fused loop adds in another order);
the module is compiled in place (``nn.Module.compile``): Parameters and state dict are unchanged.
"""

from __future__ import annotations

import os
import shutil

from pgemma.paligemma import PaliGemmaForConditionalGeneration


def cpp_compiler() -> str | None:
    """Path of the C++ compiler torch.compile would use on this machine ($CXX, g++ or clang++), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and (path := shutil.which(name)):
            return path
    return None


def compile_decoder(model: PaliGemmaForConditionalGeneration) -> PaliGemmaForConditionalGeneration:
    """Compile ``model``'s Gemma decoder in place with ``torch.compile`` and return ``model``.

    Raises:
        RuntimeError: when no C++ compiler is found (torch.compile needs one on the CPU).
    """
    if cpp_compiler() is None:
        raise RuntimeError(
            "compile_decoder needs a C++ compiler for torch.compile (none of $CXX, g++, "
            "clang++ was found); install one, e.g. `apt install g++`, or use the model uncompiled"
        )
    model.language_model.compile(dynamic=True, options={"cpp_wrapper": True})
    return model
