"""The whole recipe: both stages, resumable, then the final evaluation and the exported model.

Book chapter: "Assembling PaliGemma". `run` is what ``python -m pgemma.train --out DIR`` calls
(`pgemma.train.__main__`), and what the recipe search runs once per variant (`pgemma.train.search`).
The run folder gets the stages' checkpoints (each with the one saved before it, ``.prev``),
recipe.json, curves.json (every evaluation) and model/, a checkpoint folder in the hub layout.
One trainer at a time, on one recipe: a folder in use, holding another recipe, or holding other
files is refused (`pgemma.train.folder`).
"""

import json
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch

from pgemma.checkpoint import save_pretrained
from pgemma.files import atomic_write
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.processor import PaliGemmaProcessor
from pgemma.tokenizer import PaliGemmaTokenizer
from pgemma.train import distributed
from pgemma.train.evaluation import evaluate
from pgemma.train.folder import CURVES_FILE, STAGE_FILES, open_run_folder
from pgemma.train.recipe import Recipe, build_model, build_tokenizer, init_loc_embeddings
from pgemma.train.stage0 import pretrain_vision
from pgemma.train.stage1 import train_prefix_lm


def run(recipe: Recipe, out: Path, eval_scenes: int = 300, curve_scenes: int = 100) -> dict[str, float]:
    """Both stages, resumable from `out`; writes curves.json there and returns the final evaluation.

    Raises RunFolderError if `out` cannot hold this run, DamagedCheckpointError if a checkpoint
    in it cannot be resumed from. On several ranks, rank 0 alone opens the folder, evaluates and
    exports, and the other ranks return an empty evaluation.
    """
    with open_run_folder(out, recipe) if distributed.is_main() else nullcontext():
        distributed.barrier()  # the other ranks wait for rank 0 to check and tidy the folder
        torch.manual_seed(recipe.stage0.seed)
        tokenizer = build_tokenizer(recipe.world, recipe.model.vocab_size)
        model = build_model(recipe.model, recipe.world, tokenizer)
        processor = PaliGemmaProcessor.from_config(model.config, tokenizer)
        if recipe.smooth_loc_init:
            init_loc_embeddings(model, tokenizer)
        curves = {}
        if recipe.stage0.steps:
            curves["stage0"] = pretrain_vision(model, processor, recipe, out / STAGE_FILES[0])
        curves["stage1"] = train_prefix_lm(
            model,
            processor,
            recipe,
            out / STAGE_FILES[1],
            on_eval=lambda: evaluate(model, processor, recipe.world, curve_scenes, generate_boxes=False),
        )
        if not distributed.is_main():
            return {}
        final = evaluate(model, processor, recipe.world, eval_scenes)
        export(model, tokenizer, out / "model")
        text = json.dumps({"recipe": asdict(recipe), **curves, "final": final}, indent=2)
        with atomic_write(out / CURVES_FILE) as temporary:
            temporary.write_text(text)
    return final


def export(model: PaliGemmaForConditionalGeneration, tokenizer: PaliGemmaTokenizer, folder: Path) -> None:
    """Write a checkpoint folder in the hub layout (pgemma and transformers both load it)."""
    save_pretrained(model, folder)
    tokenizer.save_pretrained(folder)
