"""Faster inference on a CPU, equal to the reference up to rounding: every speed-up of pgemma.

Book: no chapter; ``benchmarks/README.md`` measures them. The model modules (``pgemma.gemma``,
``pgemma.siglip``, ``pgemma.paligemma``) are the readable reference the book explains and know
nothing of this package; the speed-ups change how the model computes, not what it computes:

    fusion     q/k/v and gate/up of small Gemma layers as one product each: ``fuse_projections``
               swaps in ``FusedGemmaAttention`` and ``FusedGemmaMLP``, which override the projection step
    linear     large float32 CPU products through oneDNN, one-row ones through gemv: ``use_fast_linear``
               swaps in ``FastLinear``
    gemv       the one-row product ``x @ W.T`` as one compiled loop, at nearly the memory's speed
    compiled   the Gemma decoder compiled by ``torch.compile``: ``compile_decoder``

``prepare_for_speed`` composes them; the README's example, ``pgemma generate --fast`` and
``benchmarks/bench.py`` all call it.
"""

from pgemma.fast import compiled
from pgemma.fast.fusion import fuse_projections
from pgemma.fast.linear import use_fast_linear
from pgemma.gemma import GemmaAttention
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.siglip import SiglipAttention


def prepare_for_speed(
    model: PaliGemmaForConditionalGeneration, *, compile_decoder: bool = False
) -> PaliGemmaForConditionalGeneration:
    """Make ``model`` faster for inference, in place, and return it; its outputs stay equal up to rounding.

    The steps, in order:

    1. PyTorch's fused attention kernel in both towers (``use_sdpa = True`` on every attention
       module; attention weights, when asked for, still come from the explicit path);
    2. ``fuse_projections``: q/k/v and gate/up of small Gemma layers as one product each;
    3. ``use_fast_linear``: large float32 CPU products through oneDNN, one-row products through
       gemv (about a second of compiling per weight shape; nothing without oneDNN);
    4. with ``compile_decoder=True``, ``compiled.compile_decoder``: the Gemma decoder compiled by
       ``torch.compile``. Its 15-30 s of compiling on the first prefill and the first decode step
       pay off over long or many generations (the benchmark), not for one short answer (the command
       line's ``--fast`` leaves it off).

    Call it after moving or casting the model: fusing stacks the weights where they are. Parameters,
    their names and the state dict are unchanged, and training still computes on the reference path
    (the fused and oneDNN products run only while autograd is off).

    Raises:
        RuntimeError: with ``compile_decoder=True``, when no C++ compiler is found.
    """
    for module in model.modules():
        if isinstance(module, (GemmaAttention, SiglipAttention)):
            module.use_sdpa = True
    use_fast_linear(fuse_projections(model))
    if compile_decoder:
        compiled.compile_decoder(model)
    return model
