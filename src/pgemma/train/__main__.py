"""The trainer's command line: the whole recipe, the recipe search, fine-tuning.

Book chapter: "Assembling PaliGemma".

    python -m pgemma.train --out runs/shapes                # Recipe.shipped(): about 35 min on 2 CPU cores
    python -m pgemma.train --out runs/tiny --recipe tiny    # Recipe.tiny(), for tests
    torchrun --nproc_per_node=2 -m pgemma.train --out runs/shapes   # on 2 processes (pgemma.train.distributed)
    python -m pgemma.train search --out runs/search         # the recipe search (pgemma.train.search)

Run the same command again to resume a stopped run (`pgemma.train.pipeline.run`).
"""

import argparse
import sys
from pathlib import Path

import torch

from pgemma.train import distributed
from pgemma.train.finetune import compare_main
from pgemma.train.finetune import main as finetune_main
from pgemma.train.folder import RunFolderError
from pgemma.train.loop import DamagedCheckpointError
from pgemma.train.pipeline import run
from pgemma.train.recipe import Recipe
from pgemma.train.search import main as search_main


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["finetune"]:  # python -m pgemma.train finetune ...: pgemma.train.finetune's command line
        return finetune_main(argv[1:])
    if argv[:1] == ["finetune-compare"]:
        return compare_main(argv[1:])
    if argv[:1] == ["search"]:
        return search_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m pgemma.train",
        description="Train a small PaliGemma on the book's world of coloured shapes.",
        epilog=(
            "The recipe search: python -m pgemma.train search --help. Fine-tuning a trained model: "
            "python -m pgemma.train finetune --help (and finetune-compare --help)."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, curves.json, model/")
    parser.add_argument("--recipe", choices=["shipped", "tiny"], default="shipped")
    parser.add_argument("--eval-scenes", type=int, default=300, help="held-out scenes for the final evaluation")
    distributed.add_process_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe.shipped() if args.recipe == "shipped" else Recipe.tiny()
    try:
        with distributed.process_group(args.timeout):
            final = run(recipe, args.out, args.eval_scenes)
    except (RunFolderError, DamagedCheckpointError, distributed.DistributedError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    if not final:  # a rank other than 0: rank 0 reports
        return
    print(f"held-out scenes: {args.eval_scenes}")
    for name, value in final.items():
        print(f"  {name:14s} {value:.3f}")
    print(f"model written to {args.out / 'model'}")


if __name__ == "__main__":
    main()
