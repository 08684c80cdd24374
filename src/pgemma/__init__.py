"""pgemma: PaliGemma from scratch, a readable and reference-exact PyTorch implementation.

Each module explains one idea and names the chapter of the book that teaches it.

Axis glossary, used in every shape comment (``# (B, N, T, H)``) and docstring (``float[B, T, D]``):

    B  batch                     T  query length (tokens being computed)
    S  key length (tokens seen)  D  model (hidden) width
    N  query heads               K  key/value heads
    G  query heads per kv head   H  head dim
    P  image patches             V  vocabulary size
    C  image channels            I  image side in pixels
"""

__version__ = "0.1.0"

from pgemma.checkpoint import load_model, load_pretrained, save_pretrained
from pgemma.config import PaliGemmaConfig
from pgemma.generate import Sampling, generate
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.processor import PaliGemmaProcessor, load_processor
from pgemma.tokenizer import PaliGemmaTokenizer

__all__ = [
    "PaliGemmaConfig",
    "PaliGemmaForConditionalGeneration",
    "PaliGemmaProcessor",
    "PaliGemmaTokenizer",
    "Sampling",
    "generate",
    "load_model",
    "load_pretrained",
    "load_processor",
    "save_pretrained",
]
