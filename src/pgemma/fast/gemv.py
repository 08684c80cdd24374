"""One-row matrix products at the speed of memory: ``x @ W.T`` as one compiled multiply-and-sum loop.

Book: no chapter; ``benchmarks/README.md`` measures it. ``pgemma.fast.linear`` decides when to use it.

Decoding one token multiplies a single row by every weight matrix. Each weight is read once and
used for one multiply-add, so the product can go no faster than reading the matrix from memory
(a 300M-parameter model reads about 1 GB per token). Measured on the benchmark machine (AMD EPYC,
2 cores, torch 2.13, two threads, W float32 16384 x 2048 = 128 MiB, from memory, not cache):

    F.linear (Intel MKL)          23 GB/s   its one-row product runs on one core
    oneDNN                        38 GB/s
    gemv (this module)         46-49 GB/s
    W.sum() (reading only)     50-53 GB/s
    copy_ (read + write)       44-46 GB/s   the benchmark's memory-bandwidth reference

``gemv`` writes the product as what it is: output i is the dot product of the row with row i of W,
``(x * W).sum(-1)``. Run eagerly, that would first build the whole elementwise product, a tensor as
large as W. ``torch.compile`` fuses the multiplication into the sum and emits one C++ loop that reads
W once, split across the threads, at nearly the speed of ``W.sum()``. It compiles once per weight
shape (about a second each, a few more for the first of a process) and needs a C++ compiler. When
compiling fails, or after ``MAX_SHAPES`` shapes of weights (a Gemma decoder has five: q and o, k and
v, gate and up, down, the output head), ``gemv`` warns once per shape and returns None: the caller
then uses another kernel. The results equal ``F.linear``'s up to rounding (the products are added in
another order).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch

# torch.compile keeps at most 8 compiled versions of one function (torch._dynamo.config.recompile_limit);
# gemv stops there itself, whatever a PyTorch version does when its limit is reached.
MAX_SHAPES = 8

_compiled_shapes: set[tuple[int, ...]] = set()
_failed_shapes: set[tuple[int, ...]] = set()


def multiply_and_sum(row: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """float[in], float[out, in] -> float[out]: ``weight @ row``, as the sum of the elementwise products."""
    return (row * weight).sum(dim=-1)


@functools.cache
def compiled_multiply_and_sum() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``multiply_and_sum`` compiled by torch.compile; built on first use (importing the compiler takes time)."""
    # fullgraph: an error instead of a silent eager run, which would allocate a tensor the size of W.
    return torch.compile(multiply_and_sum, dynamic=False, fullgraph=True)


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """``F.linear(x, weight)`` for one row: float[..., in] (one row in all) -> float[..., out].

    Returns None, after a warning the first time for each shape, when this weight's shape could not
    be compiled.
    """
    row, shape = x.reshape(-1), tuple(weight.shape)  # (in,)
    if torch.compiler.is_compiling():  # inside a compiled model: the compiler fuses the loop itself
        out = multiply_and_sum(row, weight)  # (out,)
    else:
        if shape in _failed_shapes:
            return None
        if shape not in _compiled_shapes and len(_compiled_shapes) >= MAX_SHAPES:
            return _give_up(shape, f"{MAX_SHAPES} other shapes are compiled already, MAX_SHAPES")
        try:
            out = compiled_multiply_and_sum()(row, weight)  # (out,)
        except Exception as error:  # no C++ compiler, torch.compile's own limit, ...
            message = str(error).splitlines()[0] if str(error) else ""
            return _give_up(shape, f"{type(error).__name__}: {message}")
        _compiled_shapes.add(shape)
    return out.view(*x.shape[:-1], shape[0])


def _give_up(shape: tuple[int, ...], reason: str) -> None:
    """Remember that ``shape`` does not compile and say so, once."""
    _failed_shapes.add(shape)
    warnings.warn(
        f"pgemma.fast.gemv: no compiled product for a {shape[0]} x {shape[1]} weight ({reason}); "
        "its one-row products use another kernel",
        RuntimeWarning,
        stacklevel=3,
    )
