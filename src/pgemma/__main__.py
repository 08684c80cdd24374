"""Command line: `python -m pgemma generate` (or `pgemma generate`). Book chapter: "Assembling PaliGemma".

    pgemma generate                                    # the shipped model on a new scene
    pgemma generate --prompt "detect circle"
    pgemma generate --model CHECKPOINT_DIR --image cat.jpg --prompt "caption en"
    pgemma generate --model DIR --image cat.jpg --temperature 0.8 --top-p 0.9 --seed 0

Without --model, the small model that ships with pgemma answers (trained on the book's world of
coloured shapes, `pgemma.train`). Without --image, a new held-out scene of that world is drawn,
saved as scene_SEED.png in the current folder (said on stderr), and the prompt is about it.
The answer is printed as it is written. Greedy decoding unless one of --temperature, --top-k,
--top-p or --seed is given, which switch on sampling. Bad input (a missing folder, a file that is
not an image, a prompt too long for the model, a device this machine lacks, a flag's bad value)
ends with one line on stderr, ``pgemma: error: ...``, and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import torch

DEFAULT_PROMPT = "caption en"  # PaliGemma's task prefix for a short English caption
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXIT_BAD_INPUT = 2  # argparse's own code for a usage error


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"pgemma: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type of --max-new-tokens: an int >= 1."""
    value = int(text)  # a ValueError here is argparse's "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="pgemma", description="PaliGemma from scratch.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="answer a prompt about an image, streaming the answer")
    gen.add_argument(
        "--model",
        type=Path,
        help="checkpoint folder: config.json, model.safetensors, tokenizer.json or tokenizer.model "
        "(default: the shipped model of coloured shapes)",
    )
    gen.add_argument(
        "--image", type=Path, help="image file (any format PIL reads; default: draw a new scene of coloured shapes)"
    )
    gen.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"task prompt (default: {DEFAULT_PROMPT!r})")
    gen.add_argument("--max-new-tokens", type=positive_int, default=64, help="stop after this many tokens (default 64)")
    gen.add_argument("--temperature", type=float, help="sample, dividing the logits by T")
    gen.add_argument("--top-k", type=int, help="sample among the K most likely tokens")
    gen.add_argument("--top-p", type=float, help="sample among the most likely tokens holding P of the mass")
    gen.add_argument("--seed", type=int, help="sample reproducibly with this seed")
    gen.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="weights' dtype (default float32)")
    gen.add_argument("--device", default="cpu", help="cpu, cuda or mps, if this machine has it (default cpu)")
    gen.add_argument(
        "--fast",
        action="store_true",
        help="pgemma.fast.prepare_for_speed: PyTorch's fused attention, fused q/k/v and gate/up "
        "products, and faster kernels for large CPU matrix products; faster, equal to the "
        "default up to rounding",
    )
    return parser


def run_generate(args: argparse.Namespace) -> None:
    """Load the checkpoint and stream the answer to stdout; raises ValueError on bad input."""
    from pgemma.checkpoint import load_model
    from pgemma.devices import compute_device
    from pgemma.fast import prepare_for_speed
    from pgemma.generate import Sampling, generate
    from pgemma.processor import load_processor
    from pgemma.shipped import shipped_model_folder

    sampling = Sampling.from_options(args.temperature, args.top_k, args.top_p, args.seed)  # bad flags fail first
    device = compute_device(args.device)  # before anything slow: a machine without CUDA fails here
    folder = args.model
    if folder is None:
        folder = shipped_model_folder()
        if not folder.is_dir():
            raise ValueError(
                f"no --model given and the shipped model folder {str(folder)!r} is missing; "
                "reinstall pgemma, or pass --model CHECKPOINT_DIR"
            )
    if not folder.is_dir():
        raise ValueError(f"model folder {str(folder)!r} does not exist or is not a folder")
    processor = load_processor(folder)
    image_file = draw_scene(Path.cwd()) if args.image is None else args.image
    image = processor.load_image(image_file)  # a bad image fails here, before the slow model load
    model = load_model(folder, dtype=DTYPES[args.dtype], device=device)
    if args.fast:
        prepare_for_speed(model)
    generate(
        model,
        processor,
        image,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        sampling=sampling,
        stream=lambda row, text: print(text, end="", flush=True),
    )
    print(flush=True)


def draw_scene(folder: Path) -> Path:
    """Draw a random held-out scene of the shipped model's world into `folder`; returns its path."""
    import random

    from pgemma.shipped import SHIPPED_WORLD
    from pgemma.world import example, split_seeds

    seed = next(split_seeds("heldout", start=random.randrange(1_000_000)))  # never seen in training
    path = folder / f"scene_{seed}.png"
    example(seed, SHIPPED_WORLD).image.save(path)
    print(f"pgemma: no --image given: drew scene {seed} of the shapes world, saved to {path}", file=sys.stderr)
    return path


def one_line(error: BaseException) -> str:
    """The error's message on one line: a checkpoint's list of problems joined by semicolons."""
    head, *details = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return " ".join([head, "; ".join(details)]) if details else head


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m pgemma` and the `pgemma` script; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # a usage error (2, already printed) or --help (0)
        return stop.code if isinstance(stop.code, int) else EXIT_BAD_INPUT
    try:
        run_generate(args)
    except (ValueError, TypeError, OSError, MemoryError, torch.OutOfMemoryError) as error:
        print(f"pgemma: error: {one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130  # the shell's code for Ctrl-C
    return 0


if __name__ == "__main__":
    sys.exit(main())
