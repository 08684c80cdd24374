"""Command line: `python -m pgemma generate` (or `pgemma generate`). Book chapter: "Assembling PaliGemma".

    pgemma generate --model CHECKPOINT_DIR --image cat.jpg --prompt "caption en"
    pgemma generate --model DIR --image shapes.png --prompt "detect circle" --max-new-tokens 20
    pgemma generate --model DIR --image cat.jpg --temperature 0.8 --top-p 0.9 --seed 0

The answer is printed as it is written. Greedy decoding unless one of --temperature, --top-k,
--top-p or --seed is given, which switch on sampling. Bad input (a missing folder, a file that is
not an image, a prompt too long for the model) ends with a one-line message on stderr and exit
code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

# Where a model or image that ships with the package would be found; None until one does.
DEFAULT_MODEL: Path | None = None
DEFAULT_IMAGE: Path | None = None
DEFAULT_PROMPT = "caption en"  # PaliGemma's task prefix for a short English caption
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXIT_BAD_INPUT = 2  # argparse's own code for a usage error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgemma", description="PaliGemma from scratch.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="answer a prompt about an image, streaming the answer")
    gen.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                     help="checkpoint folder: config.json, model.safetensors, tokenizer.json or tokenizer.model")
    gen.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="image file (any format PIL reads)")
    gen.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"task prompt (default: {DEFAULT_PROMPT!r})")
    gen.add_argument("--max-new-tokens", type=int, default=64, help="stop after this many tokens (default 64)")
    gen.add_argument("--temperature", type=float, help="sample, dividing the logits by T")
    gen.add_argument("--top-k", type=int, help="sample among the K most likely tokens")
    gen.add_argument("--top-p", type=float, help="sample among the most likely tokens holding P of the mass")
    gen.add_argument("--seed", type=int, help="sample reproducibly with this seed")
    gen.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="weights' dtype (default float32)")
    gen.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    return parser


def run_generate(args: argparse.Namespace) -> None:
    """Load the checkpoint and stream the answer to stdout; raises ValueError on bad input."""
    from pgemma.checkpoint import load_model
    from pgemma.generate import generate
    from pgemma.processor import load_processor

    if args.model is None:
        raise ValueError("no --model given, and this version of pgemma ships no default model")
    if args.image is None:
        raise ValueError("no --image given, and this version of pgemma ships no default image")
    if not args.model.is_dir():
        raise ValueError(f"model folder {str(args.model)!r} does not exist or is not a folder")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise ValueError(f"--device {args.device!r} is not a torch device (try cpu or cuda)") from None
    processor = load_processor(args.model)
    image = processor.load_image(args.image)  # a bad image fails here, before the slow model load
    model = load_model(args.model, dtype=DTYPES[args.dtype], device=device)
    do_sample = any(v is not None for v in (args.temperature, args.top_k, args.top_p, args.seed))
    generate(
        model, processor, image, args.prompt,
        max_new_tokens=args.max_new_tokens,
        do_sample=do_sample,
        temperature=1.0 if args.temperature is None else args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stream=lambda row, text: print(text, end="", flush=True),
    )
    print(flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m pgemma` and the `pgemma` script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        run_generate(args)
    except (ValueError, TypeError, OSError) as error:
        print(f"pgemma: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130  # the shell's code for Ctrl-C
    return 0


if __name__ == "__main__":
    sys.exit(main())
