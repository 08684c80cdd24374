"""Training on 1 and 2 processes (torchrun) on this machine: examples per second and communication.

    .venv/bin/python benchmarks/distributed.py              # Recipe.shipped()'s model and batch of 32
    .venv/bin/python benchmarks/distributed.py --steps 10   # fewer timed steps per stage

For each setting (one process with 1 and with 2 torch threads, two processes with 1 thread each)
it starts ``torchrun --nproc_per_node=N`` on this script, which trains each stage of
`pgemma.train` for a few steps in a temporary folder with the shipped recipe's model and global
batch, and reports:

- examples per second: the global batch over the median time of a step (the first steps, which
  warm up, and the last, which saves a checkpoint, are not timed);
- communication per step: the time spent in `pgemma.train.distributed`'s gradient all-reduce and
  the printed loss's all-reduce, and, in stage 0, in the ring's exchanges of caption embeddings
  (forward and backward), medians over the timed steps, on rank 0.

The time a rank waits for a slower one shows up as communication time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

WARMUP_STEPS = 3
SETTINGS = [(1, 1), (1, 2), (2, 1)]  # (processes, torch threads per process)


def measure_stage(stage, train: Callable[[], None], batch_size: int) -> dict[str, float]:
    """Run `train()`, one stage of training, timing its steps and its exchanges; this rank's figures."""
    from pgemma import contrastive
    from pgemma.train import distributed

    step_starts: list[float] = []
    exchanges: list[tuple[float, float]] = []  # (start, seconds) of each exchange
    real_loop = stage.train_loop

    def loop(name, module, loss_fn, *args, **kwargs):
        def timed_loss_fn(step):
            step_starts.append(time.perf_counter())
            return loss_fn(step)

        return real_loop(name, module, timed_loss_fn, *args, **kwargs)

    def timed(fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                exchanges.append((start, time.perf_counter() - start))

        return wrapper

    # The gradient all-reduce, the printed loss's all-reduce, and the ring's exchanges (stage 0).
    originals = [(distributed, "average_gradients"), (distributed, "mean_over_ranks"), (contrastive, "_exchange")]
    originals = [(module, name, getattr(module, name)) for module, name in originals]
    stage.train_loop = loop
    for module, name, fn in originals:
        setattr(module, name, timed(fn))
    try:
        train()
    finally:
        stage.train_loop = real_loop
        for module, name, fn in originals:
            setattr(module, name, fn)
    timed_steps = list(zip(step_starts, step_starts[1:]))[WARMUP_STEPS:]  # the last step, which saves, is not
    steps = [end - start for start, end in timed_steps]
    comm = [sum(seconds for at, seconds in exchanges if start <= at < end) for start, end in timed_steps]
    return {
        "examples_per_s": batch_size / statistics.median(steps),
        "step_ms": 1000 * statistics.median(steps),
        "comm_ms": 1000 * statistics.median(comm),
    }


def worker(steps: int) -> None:
    """Under torchrun: train both stages for `steps` timed steps; rank 0 prints the figures as JSON."""
    from pgemma.processor import PaliGemmaProcessor
    from pgemma.train import distributed, stage0, stage1
    from pgemma.train.recipe import Recipe, build_model, build_tokenizer

    shipped = Recipe.shipped()
    total = WARMUP_STEPS + steps + 1
    recipe = replace(
        shipped,
        stage0=replace(shipped.stage0, steps=total, eval_every=0, checkpoint_every=total),
        stage1=replace(shipped.stage1, steps=total, eval_every=0, checkpoint_every=total),
    )
    with distributed.process_group(), tempfile.TemporaryDirectory() as folder:  # rank 0 alone writes in its own
        torch.manual_seed(0)
        tokenizer = build_tokenizer(recipe.world, recipe.model.vocab_size)
        model = build_model(recipe.model, recipe.world, tokenizer)
        processor = PaliGemmaProcessor.from_config(model.config, tokenizer)
        out = Path(folder)
        figures = {
            "stage 0": measure_stage(
                stage0,
                lambda: stage0.pretrain_vision(model, processor, recipe, out / "stage0.safetensors"),
                recipe.stage0.batch_size,
            ),
            "stage 1": measure_stage(
                stage1,
                lambda: stage1.train_prefix_lm(model, processor, recipe, out / "stage1.safetensors"),
                recipe.stage1.batch_size,
            ),
        }
        if distributed.is_main():
            print("FIGURES " + json.dumps(figures))


def run_setting(processes: int, threads: int, steps: int) -> dict[str, dict[str, float]]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command += [__file__, "--worker", "--steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("FIGURES "))
    return json.loads(line.removeprefix("FIGURES "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per stage (after 3 warm-up steps)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps)
        return
    print(
        f"pgemma training on torchrun, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    print(f"load average before: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"Recipe.shipped()'s model, global batch 32, median of {args.steps} steps per stage")
    results = {setting: run_setting(*setting, args.steps) for setting in SETTINGS}
    for stage in ("stage 0", "stage 1"):
        print(f"== {stage}")
        base = results[SETTINGS[0]][stage]["examples_per_s"]
        for (processes, threads), figures in results.items():
            f = figures[stage]
            print(
                f"  {processes} process{'es' if processes > 1 else '  '} x {threads} thread{'s' if threads > 1 else ' '}"
                f"  {f['examples_per_s']:7.1f} examples/s "
                f"({f['examples_per_s'] / base:.2f}x)  step {f['step_ms']:6.1f} ms  "
                f"communication {f['comm_ms']:5.1f} ms/step ({f['comm_ms'] / f['step_ms']:.0%})"
            )


if __name__ == "__main__":
    main()
