"""The small PaliGemma that ships with pgemma, and the world it was trained on.

Book chapter: "Assembling PaliGemma". The model was trained by ``python -m pgemma.train``
(`pgemma.train.recipe.Recipe.shipped`) on scenes of `SHIPPED_WORLD`; finding and loading it needs
no training code.
"""

from importlib import resources
from pathlib import Path

from pgemma.checkpoint import load_pretrained
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.processor import PaliGemmaProcessor
from pgemma.world import WorldConfig

SHIPPED_MODEL = "shapes"  # the folder under pgemma/assets holding the trained model
SHIPPED_WORLD = WorldConfig(min_side=16, max_side=28)  # the scenes the shipped model was trained on


def shipped_model_folder() -> Path:
    """The checkpoint folder of the shipped model.

    Note: the package must be installed as files (as pip does), not imported from a zip.
    """
    return Path(str(resources.files("pgemma.assets").joinpath(SHIPPED_MODEL)))


def load_shipped_model() -> tuple[PaliGemmaForConditionalGeneration, PaliGemmaProcessor]:
    """The shipped model (in eval mode) and its processor."""
    return load_pretrained(shipped_model_folder())
