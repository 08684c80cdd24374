"""Fine-tuning a trained PaliGemma on a new task of the world: the whole model, all but the vision tower, or LoRA.

Book chapter: "Fine-tuning PaliGemma".

    python -m pgemma.train finetune --out runs/lora8 --mode lora --rank 8   # the shipped model, LoRA rank 8
    python -m pgemma.train finetune path/to/model --out runs/full --mode full --old-fraction 0.25
    python -m pgemma.train finetune-compare --out runs/compare  # the chapter's record
    torchrun --nproc_per_node=2 -m pgemma.train finetune --out runs/lora8   # on 2 processes

PaliGemma is a base meant to be fine-tuned, one copy per task (Beyer et al. 2024). The
new task here is a kind of shape the base has never seen: diamonds, which `world.render` draws
but no scene of the base's world holds. Every training scene of the fine-tuning holds a diamond
(the base world's kinds plus "diamond"; seeds without one are skipped), and all four tasks are
asked about them. A fraction of each batch (`old_fraction`) can come from the base's own world
instead, so that what the base knew is rehearsed while it learns diamonds.

Three ways to fine-tune (`MODES`):

- ``full``: every weight trains;
- ``frozen-vision``: the vision tower stays as it is: fewer numbers train, and its weights need
  no gradient and no optimizer state;
- ``lora``: every weight is frozen and each linear layer of the decoder's attention and MLP
  learns a rank-r update beside it (`pgemma.lora`).

A run is resumable and atomic like the trainer's: it keeps one checkpoint (`loop.save_state`) in a
run folder (`folder.open_run_folder`, with the settings as recipe.json), and writes at the end
curves.json (evaluations on held-out scenes of both worlds, before, during and after, with the
time and memory the run took) and the result: ``model/``, a checkpoint folder in the hub layout,
or, for LoRA, ``adapter/``, the adapter alone in PEFT's format (`lora.save_adapter`).

Under torchrun it trains data-parallel as stage 1 does (`pgemma.train.distributed`): each rank
takes its slice of every step's batch and the gradients are averaged, so a step equals one
process's on the whole batch up to rounding; rank 0 alone evaluates and writes, every rank
resumes from rank 0's checkpoint, and a rank that fails stops the others. The batch size must
split evenly over the ranks; the times in curves.json are rank 0's.
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from pgemma.checkpoint import load_model, save_pretrained
from pgemma.files import atomic_write
from pgemma.lora import DECODER_TARGETS, add_lora, save_adapter, trainable_parameters
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.processor import PaliGemmaProcessor, load_processor
from pgemma.shipped import shipped_model_folder
from pgemma.train import distributed
from pgemma.train.data import answer_loss, process
from pgemma.train.evaluation import evaluate
from pgemma.train.folder import CURVES_FILE, FINETUNE_FILE, RECIPE_FILE, RunFolderError, open_run_folder
from pgemma.train.loop import DamagedCheckpointError, train_loop
from pgemma.train.recipe import StageConfig
from pgemma.world import HELDOUT_START, Example, Scene, WorldConfig, example, sample_scene

NEW_KIND = "diamond"
MODES = ("full", "frozen-vision", "lora")
DEFAULT_LR = {"full": 3e-4, "frozen-vision": 3e-4, "lora": 2e-3}  # LoRA's B starts at 0: it takes larger steps
NEW_TASK_SEEDS = 200_000_000  # training seeds of the new task (stages 0 and 1 read from 0 and 100_000_000)
OLD_TASK_SEEDS = 300_000_000  # and of the rehearsed old-task examples
SCAN = 8  # each step looks for its diamond scenes among SCAN * batch_size seeds (about 3 in 8 hold one)
ADAPTER_FOLDER, MODEL_FOLDER = "adapter", "model"


@dataclass(frozen=True)
class FinetuneConfig:
    """The settings of one fine-tuning run (kept as the run folder's recipe.json)."""

    base: str | None = None  # the checkpoint folder fine-tuned from; None: the shipped model
    mode: str = "lora"
    rank: int = 8  # LoRA only
    alpha: float = 16.0  # LoRA only: the update is scaled by alpha / rank
    old_fraction: float = 0.0  # the share of each batch drawn from the base's own world
    stage: StageConfig = field(  # steps, batch, schedule; the command line takes the lr from DEFAULT_LR[mode]
        default_factory=lambda: StageConfig(steps=300, lr=DEFAULT_LR["lora"], warmup=30, checkpoint_every=50)
    )
    curve_scenes: int = 100  # held-out scenes of each world per evaluation during the run

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "lora" and (isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1):
            raise ValueError(f"rank must be an integer >= 1 for LoRA, got {self.rank!r}")
        if not 0 <= self.old_fraction < 1:
            raise ValueError(f"old_fraction must be in [0, 1) (a share of each batch), got {self.old_fraction!r}")


# ----------------------------------------------------------------------------------------------
# The new task


def base_folder(cfg: FinetuneConfig) -> Path:
    """The checkpoint folder `cfg` fine-tunes."""
    return shipped_model_folder() if cfg.base is None else Path(cfg.base)


def base_world(folder: Path) -> WorldConfig:
    """The world a checkpoint folder's model was trained on, from the recipe.json beside its weights."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder: give the checkpoint folder of the model to fine-tune")
    recipe = folder / RECIPE_FILE
    if not recipe.is_file():
        raise ValueError(
            f"{folder} has no {RECIPE_FILE}: fine-tuning needs the world its model was trained on "
            "(a model folder written by python -m pgemma.train, such as the shipped one)"
        )
    try:
        world = json.loads(recipe.read_text())["world"]
        return WorldConfig(**{key: tuple(v) if isinstance(v, list) else v for key, v in world.items()})
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{recipe}: no world to fine-tune on ({error})") from error


def new_task_world(world: WorldConfig) -> WorldConfig:
    """The base world with one more kind of shape, `NEW_KIND`."""
    if NEW_KIND in world.kinds:
        raise ValueError(f"the base model's world has {NEW_KIND}s already: they are no new task for it")
    return replace(world, kinds=(*world.kinds, NEW_KIND))


def has_new_kind(scene: Scene) -> bool:
    return any(shape.kind == NEW_KIND for shape in scene.shapes)


def new_task_seeds(world: WorldConfig, start: int) -> Iterator[int]:
    """The seeds from `start` on whose scene in `world` holds a diamond."""
    seed = start
    while True:
        if has_new_kind(sample_scene(seed, world)):
            yield seed
        seed += 1


def heldout_seeds(world: WorldConfig, count: int, new_task: bool) -> list[int]:
    """The first `count` held-out seeds: of scenes with a diamond (`new_task`), or simply the first ones."""
    seeds = new_task_seeds(world, HELDOUT_START) if new_task else iter(range(HELDOUT_START, HELDOUT_START + count))
    return [seed for _, seed in zip(range(count), seeds)]


def finetune_examples(step: int, cfg: FinetuneConfig, new: WorldConfig, old: WorldConfig) -> list[Example]:
    """The batch of a step (on several ranks, this rank's slice): diamond scenes of the new world, then
    `old_fraction` of it from the old world."""
    size = cfg.stage.batch_size
    old_count = round(size * cfg.old_fraction)
    seeds = new_task_seeds(new, NEW_TASK_SEEDS + step * size * SCAN)
    start = OLD_TASK_SEEDS + step * size
    batch = [(seed, new) for _, seed in zip(range(size - old_count), seeds)]
    batch += [(seed, old) for seed in range(start, start + old_count)]
    return [example(seed, world) for seed, world in distributed.shard(batch)]  # each rank draws its slice only


# ----------------------------------------------------------------------------------------------
# The three modes


def prepare(model: PaliGemmaForConditionalGeneration, cfg: FinetuneConfig) -> int:
    """Make trainable what `cfg.mode` trains, freeze the rest; returns the number of trainable numbers."""
    if cfg.mode == "frozen-vision":
        model.vision_tower.requires_grad_(False)
    elif cfg.mode == "lora":
        torch.manual_seed(cfg.stage.seed)  # LoRA's A matrices start random
        add_lora(model, DECODER_TARGETS, cfg.rank, cfg.alpha)
    return trainable_parameters(model)


def training_state_bytes(model: PaliGemmaForConditionalGeneration) -> int:
    """Bytes training holds besides activations: every weight, plus a gradient and AdamW's two moments
    for each trainable one."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return weights + 3 * trained


def evaluate_both(
    model: PaliGemmaForConditionalGeneration,
    processor: PaliGemmaProcessor,
    new: WorldConfig,
    old: WorldConfig,
    scenes: int,
    generate_boxes: bool = False,
) -> dict[str, float]:
    """Every task on held-out diamond scenes (``new_...``) and on held-out scenes of the base world (``old_...``)."""
    scores = {}
    for name, world, seeds in (
        ("new", new, heldout_seeds(new, scenes, new_task=True)),
        ("old", old, heldout_seeds(old, scenes, new_task=False)),
    ):
        found = evaluate(model, processor, world, seeds=seeds, generate_boxes=generate_boxes)
        scores.update({f"{name}_{key}": value for key, value in found.items()})
    return scores


def clocks() -> torch.Tensor:
    """Wall-clock and CPU seconds (of every thread of this process) so far, as float64[2].

    On a machine other programs share, the CPU time of a step changes less than its wall time.
    """
    return torch.tensor([time.perf_counter(), time.process_time()], dtype=torch.float64)


def max_rss_mb() -> float:
    """The most memory this process has held so far (peak resident set size), in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KB on Linux


# ----------------------------------------------------------------------------------------------
# A run


def finetune(cfg: FinetuneConfig, out: Path, eval_scenes: int = 200) -> dict:
    """Fine-tune `cfg.base` as `cfg` says, resumable from `out`; writes curves.json and the result there.

    Returns what curves.json holds: the settings, trainable parameters, the evaluation curve (step 0 is
    the base model), the final evaluation on `eval_scenes` scenes of each world (boxes generated), and
    seconds per training step and memory.
    Raises RunFolderError if `out` cannot hold this run, DamagedCheckpointError if its checkpoint cannot
    be resumed from, ValueError for a base folder that is not a model trained on the book's world.
    On several ranks, rank 0 alone opens the folder, evaluates and writes; the other ranks return {}.
    """
    base = base_folder(cfg)
    old = base_world(base)
    new = new_task_world(old)
    with open_run_folder(out, cfg) if distributed.is_main() else nullcontext():
        distributed.barrier()  # the other ranks wait for rank 0 to check and tidy the folder
        model = load_model(base, use_sdpa=True)
        processor = load_processor(base)
        memory_loaded = max_rss_mb()
        before = distributed.on_main(lambda: evaluate_both(model, processor, new, old, cfg.curve_scenes))
        trainable = prepare(model, cfg)
        # this invocation's evaluation time and steps: a resumed run times only the steps it runs
        evaluating, steps_run = torch.zeros(2, dtype=torch.float64), 0

        def loss_fn(step: int) -> torch.Tensor:
            nonlocal steps_run
            steps_run += 1
            return answer_loss(model, process(processor, finetune_examples(step, cfg, new, old)))

        def on_eval() -> dict[str, float]:
            nonlocal evaluating
            start = clocks()
            scores = evaluate_both(model, processor, new, old, cfg.curve_scenes)
            evaluating += clocks() - start
            return scores

        start = clocks()
        curve = train_loop(f"finetune ({cfg.mode})", model, loss_fn, cfg.stage, out / FINETUNE_FILE, on_eval)
        if not distributed.is_main():
            return {}
        wall, cpu = ((clocks() - start - evaluating) / max(1, steps_run)).tolist()
        final = evaluate_both(model, processor, new, old, eval_scenes, generate_boxes=True)
        if cfg.mode == "lora":
            save_adapter(model, out / ADAPTER_FOLDER, base_model_name_or_path=str(base.resolve()))
        else:
            save_pretrained(model, out / MODEL_FOLDER)
            processor.tokenizer.save_pretrained(out / MODEL_FOLDER)
        result = {
            "settings": asdict(cfg),
            "trainable_parameters": trainable,
            "total_parameters": sum(p.numel() for p in model.parameters()),
            "training_state_mb": training_state_bytes(model) / 2**20,
            "curve": [{"step": 0, **before}, *curve],
            "final": final,
            "eval_scenes": eval_scenes,
            "steps_timed": steps_run,
            "seconds_per_step": wall,
            "cpu_seconds_per_step": cpu,
            "memory_loaded_mb": memory_loaded,
            "memory_peak_mb": max_rss_mb(),
        }
        with atomic_write(out / CURVES_FILE) as temporary:
            temporary.write_text(json.dumps(result, indent=2))
    return result


# ----------------------------------------------------------------------------------------------
# The command line


def main(argv: list[str]) -> None:
    """``python -m pgemma.train finetune [FOLDER] --out DIR [--mode ...]``: one fine-tuning run."""
    parser = argparse.ArgumentParser(
        prog="python -m pgemma.train finetune",
        description=f"Fine-tune a PaliGemma trained on the book's world to a new kind of shape ({NEW_KIND}s).",
    )
    parser.add_argument("folder", nargs="?", type=Path, help="the model's checkpoint folder (default: the shipped one)")
    parser.add_argument(
        "--out", type=Path, required=True, help="run folder: checkpoint, curves.json, model/ or adapter/"
    )
    parser.add_argument("--mode", choices=MODES, default="lora", help="what trains (default: lora)")
    parser.add_argument("--rank", type=int, default=None, help="LoRA's rank r (default 8; --mode lora only)")
    parser.add_argument("--alpha", type=float, default=16.0, help="LoRA's scale is alpha / r (default 16)")
    parser.add_argument("--old-fraction", type=float, default=0.0, help="share of each batch from the old world")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default: {DEFAULT_LR})")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between evaluations (0: none)")
    parser.add_argument("--curve-scenes", type=int, default=100, help="held-out scenes per world per evaluation")
    parser.add_argument("--eval-scenes", type=int, default=200, help="held-out scenes per world at the end")
    distributed.add_process_arguments(parser)
    args = parser.parse_args(argv)
    if args.rank is not None and args.mode != "lora":
        parser.error(f"--rank is LoRA's rank: it needs --mode lora, not --mode {args.mode}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        stage = StageConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=DEFAULT_LR[args.mode] if args.lr is None else args.lr,
            warmup=max(1, args.steps // 10),
            checkpoint_every=50,
            eval_every=args.eval_every,
        )
        cfg = FinetuneConfig(
            base=None if args.folder is None else str(args.folder),
            mode=args.mode,
            rank=8 if args.rank is None else args.rank,
            alpha=args.alpha,
            old_fraction=args.old_fraction,
            stage=stage,
            curve_scenes=args.curve_scenes,
        )
        with distributed.process_group(args.timeout):
            result = finetune(cfg, args.out, args.eval_scenes)
    except (ValueError, RunFolderError, DamagedCheckpointError, distributed.DistributedError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    if not result:  # a rank other than 0: rank 0 reports
        return
    print(f"trainable parameters: {result['trainable_parameters']:,} of {result['total_parameters']:,}")
    print(f"held-out scenes: {args.eval_scenes} with a {NEW_KIND} (new), {args.eval_scenes} of the old world")
    for name, value in result["final"].items():
        print(f"  {name:18s} {value:.3f}")
    written = args.out / (ADAPTER_FOLDER if args.mode == "lora" else MODEL_FOLDER)
    print(f"{'adapter' if args.mode == 'lora' else 'model'} written to {written}")


# ----------------------------------------------------------------------------------------------
# The comparison the chapter shows

RECORD_NAME = "finetune_record.json"  # in pgemma/assets
COMPARE_COMMAND = "python -m pgemma.train finetune-compare --out runs/compare"
# (name, run folder, options of python -m pgemma.train finetune): two ranks, and rehearsal of the old world
COMPARISON = (
    ("full", "full", ["--mode", "full"]),
    ("frozen vision tower", "frozen-vision", ["--mode", "frozen-vision"]),
    ("LoRA r=2", "lora-r2", ["--mode", "lora", "--rank", "2"]),
    ("LoRA r=16", "lora-r16", ["--mode", "lora", "--rank", "16"]),
    ("full, 25% old", "full-old25", ["--mode", "full", "--old-fraction", "0.25"]),
)
TABLE_COLUMNS = {  # column title: how to read it from a run of the record
    "run": lambda run: run["name"],
    "trainable": lambda run: f"{run['trainable_parameters']:,}",
    "diamonds: caption": lambda run: f"{run['final']['new_caption_exact']:.2f}",
    "diamonds: box IoU": lambda run: f"{run['final']['new_detect_iou']:.2f}",
    "old world: caption": lambda run: f"{run['final']['old_caption_exact']:.2f}",
    "old world: box IoU": lambda run: f"{run['final']['old_detect_iou']:.2f}",
    "ms / step": lambda run: f"{1000 * run['seconds_per_step']:.0f}",
    "CPU ms / step": lambda run: f"{1000 * run['cpu_seconds_per_step']:.0f}",
    "state MB": lambda run: f"{run['training_state_mb']:.1f}",
    "peak MB": lambda run: f"{run['memory_peak_mb']:.0f}",
}


def record_path() -> Path:
    """Where the comparison's record ships: pgemma/assets/finetune_record.json."""
    return shipped_model_folder().parent / RECORD_NAME


def load_record(path: Path | None = None) -> dict:
    """The comparison's record (default: the one that ships with pgemma)."""
    return json.loads((path or record_path()).read_text())


def comparison_table(record: dict) -> str:
    """The record's final numbers as a Markdown table, one row per run."""
    rows = [list(TABLE_COLUMNS), ["---"] * len(TABLE_COLUMNS)]
    rows += [[read(run) for read in TABLE_COLUMNS.values()] for run in record["runs"]]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def compare(out: Path, record: Path, threads: int | None = None) -> dict:
    """Run every fine-tuning of `COMPARISON` in a process of its own (so each one's peak memory is its own),
    resumable from `out`, and write their curves.json files together as the record."""
    runs = []
    for name, folder, options in COMPARISON:
        curves = out / folder / CURVES_FILE
        if not curves.exists():  # a finished run is not run again (its timing would be of no step)
            command = [sys.executable, "-m", "pgemma.train", "finetune", "--out", str(out / folder), *options]
            subprocess.run(command + (["--threads", str(threads)] if threads else []), check=True)
        runs.append({"name": name, **json.loads(curves.read_text())})
    result = {"command": COMPARE_COMMAND, "threads": threads or torch.get_num_threads(), "runs": runs}
    with atomic_write(record) as temporary:
        temporary.write_text(json.dumps(result, indent=1) + "\n")
    return result


def compare_main(argv: list[str]) -> None:
    """``python -m pgemma.train finetune-compare --out DIR``: the chapter's comparison, written as its record."""
    parser = argparse.ArgumentParser(
        prog="python -m pgemma.train finetune-compare",
        description=f"Fine-tune the shipped model in each way the chapter compares, and write {RECORD_NAME}.",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs (one run folder each)")
    parser.add_argument("--record", type=Path, default=record_path(), help="where to write the record")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads of each run")
    args = parser.parse_args(argv)
    try:
        result = compare(args.out, args.record, args.threads)
    except subprocess.CalledProcessError as error:
        parser.exit(1, f"{parser.prog}: error: a run failed ({' '.join(error.cmd)})\n")
    print(comparison_table(result))
    print(f"record written to {args.record}")
