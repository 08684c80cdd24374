"""The recipe search: the shipped recipe against one change at a time, and what each tower learned.

Book chapter: "Assembling PaliGemma".

    python -m pgemma.train search --out runs/search               # the chapter's record
    python -m pgemma.train search --out runs/search --jobs 2      # two runs at a time
    python -m pgemma.train search --out runs/tiny --base tiny     # the same on Recipe.tiny()

Each variant of `VARIANTS` is the base recipe with one change. `search` trains each in a run
folder of its own with `pipeline.run` (so a stopped search resumes where it stopped, and a
finished run is only evaluated again), then probes the vision tower that each run's stage 1
started from: fresh linear heads, trained on the frozen tower's patch vectors, read the kind of
shape on each patch and the box of the shape covering it. A tower that kept where things are
gives a probe a small box error; one that did not, a large one, whatever its stage-0 heads say.
Everything goes into one JSON record; the record the chapter shows,
pgemma/assets/recipe_search.json, is `SEARCH_COMMAND`'s output (the shipped base).
"""

import argparse
import json
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from pgemma.files import atomic_write
from pgemma.processor import PaliGemmaProcessor
from pgemma.train.data import training_examples
from pgemma.train.folder import CURVES_FILE, STAGE_FILES, RunFolderError
from pgemma.train.loop import DamagedCheckpointError, load_state, make_optimizer
from pgemma.train.pipeline import run
from pgemma.train.recipe import Recipe, build_model, build_tokenizer
from pgemma.train.stage0 import TowerPretrainer
from pgemma.world import example, split_seeds

RECORD_NAME = "recipe_search.json"
BASES = {"shipped": Recipe.shipped, "tiny": Recipe.tiny}


@dataclass(frozen=True)
class ProbeConfig:
    steps: int = 400
    batch_size: int = 32
    lr: float = 3e-3
    scenes: int = 200  # held-out scenes the probe is measured on
    seed: int = 0


@dataclass(frozen=True)
class Variant:
    name: str
    folder: str  # its run folder, inside the search's
    description: str
    change: Callable[[Recipe], Recipe]  # the base recipe -> this variant's


VARIANTS = (
    Variant(
        "shipped",
        "shipped",
        "the base recipe: stage 0 on captions and per-patch labels, then stage 1",
        lambda r: r,
    ),
    Variant(
        "no stage 0",
        "no-stage0",
        "no stage 0: stage 1 starts from a random vision tower",
        lambda r: replace(r, stage0=replace(r.stage0, steps=0)),
    ),
    Variant(
        "captions only",
        "captions-only",
        "stage 0 on captions alone: no per-patch labels, its patch heads never train",
        lambda r: replace(r, patch_label_weight=0.0),
    ),
    Variant(
        "half head_dim",
        "half-head-dim",
        "the decoder's attention heads half as wide (shipped: 32 instead of 64)",
        lambda r: replace(r, model=replace(r.model, head_dim=r.model.head_dim // 2)),
    ),
)
SEARCH_COMMAND = "python -m pgemma.train search --out runs/search"  # the record of these, as it ships


# ----------------------------------------------------------------------------------------------
# Linear probes


def probe_tower(recipe: Recipe, folder: Path, cfg: ProbeConfig = ProbeConfig()) -> dict[str, float]:
    """Train fresh linear heads on the frozen patch vectors of the tower that stage 1 of the run in
    `folder` started from (its stage-0 checkpoint, or the random tower when it had no stage 0), and
    measure them on held-out scenes: kind accuracy per patch, box error of the covering shape (px)."""
    torch.manual_seed(recipe.stage0.seed)  # as pipeline.run does: the same random tower
    tokenizer = build_tokenizer(recipe.world, recipe.model.vocab_size)
    model = build_model(recipe.model, recipe.world, tokenizer)
    processor = PaliGemmaProcessor.from_config(model.config, tokenizer)
    width, patch = model.config.vision_config.hidden_size, recipe.model.patch_size
    pretrainer = TowerPretrainer(model.vision_tower, recipe.world, tokenizer.vocab_size, width)
    if recipe.stage0.steps:
        load_state(folder / STAGE_FILES[0], pretrainer, make_optimizer(pretrainer, recipe.stage0))
    torch.manual_seed(cfg.seed)
    heads = nn.ModuleList([pretrainer.colour_head, pretrainer.kind_head, pretrainer.box_head])
    for head in heads:
        head.reset_parameters()
    optimizer = torch.optim.AdamW(heads.parameters(), lr=cfg.lr)
    pretrainer.eval()
    batches = replace(recipe.stage0, batch_size=cfg.batch_size)  # stage 0's training scenes
    for step in tqdm(range(cfg.steps), desc=f"probe {folder.name}"):
        examples = training_examples(step, recipe.world, batches, stage=0)
        with torch.no_grad():
            features = pretrainer.patch_features(examples, processor)  # (B, P, Dv), the tower frozen
        loss = pretrainer.patch_label_loss(features, examples, recipe.world, patch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    heldout = [example(seed, recipe.world) for _, seed in zip(range(cfg.scenes), split_seeds("heldout"))]
    with torch.no_grad():
        features = pretrainer.patch_features(heldout, processor)
    return pretrainer.read_patches(features, heldout, recipe.world, patch)


# ----------------------------------------------------------------------------------------------
# The search


def train_variant(index: int, base: Recipe, out: Path, eval_scenes: int, curve_scenes: int, threads: int) -> None:
    """Train `VARIANTS[index]` of `base` in its run folder, in a process of its own."""
    torch.set_num_threads(threads)
    variant = VARIANTS[index]
    run(variant.change(base), out / variant.folder, eval_scenes, curve_scenes)


def search(
    out: Path,
    record: Path,
    base: Recipe | None = None,
    eval_scenes: int = 300,
    probe: ProbeConfig = ProbeConfig(),
    curve_scenes: int = 100,
    jobs: int = 1,
) -> dict:
    """Train every variant of `base` (default `Recipe.shipped()`) in `out`/its folder, probe its
    tower, and write the curves, final evaluations and probes of all of them to `record`.

    With `jobs` > 1 the runs train `jobs` at a time, each in a process of its own with an equal
    share of this process's threads; the probes run here, once every run has ended.
    """
    base = Recipe.shipped() if base is None else base
    if jobs == 1:
        for variant in VARIANTS:  # trains each, or evaluates a finished run again
            run(variant.change(base), out / variant.folder, eval_scenes, curve_scenes)
    else:
        threads = max(1, torch.get_num_threads() // jobs)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            args = (base, out, eval_scenes, curve_scenes, threads)
            futures = [pool.submit(train_variant, index, *args) for index in range(len(VARIANTS))]
            try:
                for future in futures:
                    future.result()  # a run's error, raised here
            except BaseException:
                pool.shutdown(cancel_futures=True)  # the runs under way end; the waiting ones never start
                raise
    runs = []
    for variant in VARIANTS:
        recipe, folder = variant.change(base), out / variant.folder
        curves = json.loads((folder / CURVES_FILE).read_text())
        runs.append({"name": variant.name, "description": variant.description, **curves})
        runs[-1]["probe"] = probe_tower(recipe, folder, probe)
    result = {"eval_scenes": eval_scenes, "probe": asdict(probe), "runs": runs}
    with atomic_write(record) as temporary:
        temporary.write_text(json.dumps(result, indent=1) + "\n")
    return result


def search_table(record: dict) -> str:
    """The record's final numbers and probes as a Markdown table, one row per run."""
    columns = ["run", "caption", "colour", "count", "box IoU", "probe: patch kind", "probe: box error (px)"]
    rows = [columns, ["---"] * len(columns)]
    for entry in record["runs"]:
        final, probe = entry["final"], entry["probe"]
        rows.append(
            [entry["name"]]
            + [f"{final[key]:.2f}" for key in ("caption_exact", "colour_exact", "count_exact", "detect_iou")]
            + [f"{probe['patch_kind']:.2f}", f"{probe['box_error_px']:.1f}"]
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main(argv: list[str]) -> None:
    """``python -m pgemma.train search --out DIR``: every variant trained, probed, written as a record."""
    parser = argparse.ArgumentParser(
        prog="python -m pgemma.train search",
        description="Train the base recipe and each one-change variant of it, probe their vision towers, "
        f"and write the record ({RECORD_NAME}) the book's chapter 'Assembling PaliGemma' shows.",
        epilog=f"The record that ships with pgemma (pgemma/assets/{RECORD_NAME}) is the output of: {SEARCH_COMMAND}",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs (one run folder per variant)")
    parser.add_argument(
        "--record", type=Path, default=None, help=f"where to write the record (default OUT/{RECORD_NAME})"
    )
    parser.add_argument("--base", choices=sorted(BASES), default="shipped", help="the recipe the variants change")
    parser.add_argument("--eval-scenes", type=int, default=300, help="held-out scenes for each final evaluation")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in a process of its own")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if os.environ.get("WORLD_SIZE", "1") != "1":
        parser.error("the search runs in one process: start it with python, not torchrun")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.threads:
        torch.set_num_threads(args.threads)
    record = args.record or args.out / RECORD_NAME
    try:
        result = search(args.out, record, BASES[args.base](), args.eval_scenes, jobs=args.jobs)
    except (RunFolderError, DamagedCheckpointError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(search_table(result))
    print(f"record written to {record}")
