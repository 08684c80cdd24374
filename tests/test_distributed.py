"""Tests for pgemma.train.distributed: training on 2 and 4 local processes (gloo on the CPU) gives the
losses, gradients and weights of one process on the same global batch; rank 0 alone writes; a run
resumes; a rank that fails or hangs makes the others stop with a message instead of waiting forever."""

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pgemma.processor import PaliGemmaProcessor
from pgemma.train import distributed, stage0, stage1
from pgemma.train.__main__ import main, run
from pgemma.train.recipe import Recipe, build_model, build_tokenizer

RECIPE = Recipe.tiny()  # batch 8: 4, or 2, examples per rank
SHORT = replace(  # checkpoints at steps 4 and 8 (and the last) of each stage
    RECIPE,
    stage0=replace(RECIPE.stage0, steps=6, checkpoint_every=4),
    stage1=replace(RECIPE.stage1, steps=10, checkpoint_every=4),
)
TRAIN = ["--recipe", "tiny", "--eval-scenes", "4"]

# ----------------------------------------------------------------------------------------------
# Ranks as forked processes, with torchrun's environment variables


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def as_rank(rank: int, world: int, port: int, logs: Path, target, args: tuple) -> None:
    """Run `target(rank, *args)` as rank `rank` of `world`, its output in logs/rank{rank}.log."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    log = open(logs / f"rank{rank}.log", "w", buffering=1)  # noqa: SIM115 (open until the process ends)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    torch.set_num_threads(1)  # one core per rank; a forked process must not use the parent's thread pool
    target(rank, *args)


def run_ranks(world: int, logs: Path, target, *args, within: float = 300.0) -> list[int | None]:
    """Start `world` ranks of `target`; their exit codes, None for a rank still running after `within` seconds
    (it is then killed). The seconds each rank ran go to `run_ranks.seconds`."""
    context = multiprocessing.get_context("fork")  # starts in milliseconds, with pgemma already imported
    port, start = free_port(), time.monotonic()
    processes = [context.Process(target=as_rank, args=(rank, world, port, logs, target, args)) for rank in range(world)]
    for process in processes:
        process.start()
    seconds = [None] * world
    while None in seconds and time.monotonic() - start < within:
        for rank, process in enumerate(processes):
            if seconds[rank] is None and process.exitcode is not None:
                seconds[rank] = time.monotonic() - start
        time.sleep(0.05)
    codes = [process.exitcode for process in processes]
    for process in processes:
        process.kill()
        process.join()
    run_ranks.seconds = seconds
    return codes


def log_of(logs: Path, rank: int) -> str:
    return (logs / f"rank{rank}.log").read_text()


# ----------------------------------------------------------------------------------------------
# One step of each stage: loss and gradients


def first_steps(rank: int, folder: Path) -> None:
    """The loss and (averaged) gradients of step 0 of both stages, saved to folder/rank{rank}.safetensors.

    Each stage's own loss function is taken from its call to `train_loop`, which is replaced by one step.
    """
    results = {}

    def one_step(name, module, loss_fn, cfg, checkpoint, on_eval=None, slow=None):
        module.zero_grad(set_to_none=True)
        loss = loss_fn(0)
        loss.backward()
        distributed.average_gradients(module)
        results[f"{name}.loss"] = distributed.mean_over_ranks(loss.detach())
        results.update({f"{name}.{n}": p.grad for n, p in module.named_parameters() if p.grad is not None})
        return []

    stage0.train_loop = stage1.train_loop = one_step  # this process only: a forked rank, or restored below
    with distributed.process_group(timeout=60):
        torch.manual_seed(0)
        tokenizer = build_tokenizer(RECIPE.world, RECIPE.model.vocab_size)
        model = build_model(RECIPE.model, RECIPE.world, tokenizer)
        processor = PaliGemmaProcessor.from_config(model.config, tokenizer)
        stage0.pretrain_vision(model, processor, RECIPE, folder / "unused")
        stage1.train_prefix_lm(model, processor, RECIPE, folder / "unused")
    save_file({k: v.contiguous() for k, v in results.items()}, folder / f"rank{rank}.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_each_stage_gives_the_loss_and_gradients_of_one_process(world, tmp_path, monkeypatch):
    monkeypatch.setattr(stage0, "train_loop", stage0.train_loop)  # first_steps replaces them
    monkeypatch.setattr(stage1, "train_loop", stage1.train_loop)
    first_steps(0, tmp_path)  # no torchrun variables: one process, the whole batch
    expected = load_file(tmp_path / "rank0.safetensors")
    assert run_ranks(world, tmp_path, first_steps, tmp_path) == [0] * world
    ranks = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in range(world)]
    assert set(ranks[0]) == set(expected)
    tower = "vision_model.embeddings.patch_embedding.weight"
    assert {
        "stage 0.loss",
        "stage 0.log_t",
        f"stage 0.tower.{tower}",
        "stage 1.loss",
        f"stage 1.vision_tower.{tower}",
    } <= set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-4, atol=1e-6, msg=name)
        for other in ranks[1:]:  # every rank holds the same averaged gradients, to the bit
            assert torch.equal(other[name], ranks[0][name]), name


# ----------------------------------------------------------------------------------------------
# Whole runs: the same weights, rank 0 alone writes, resuming, failing ranks


def train(rank: int, out: Path, *options: str) -> None:
    main([*TRAIN, "--out", str(out), *options])


def train_recording_writes(rank: int, out: Path, crash_at: int | None) -> None:
    """`run` the SHORT recipe, noting in out/../writes{rank}.txt every file rank `rank` creates, writes,
    moves or deletes in `out` and in out/../steps{rank}.txt the steps of stage 1 it trains, and raising at
    stage 1's step `crash_at` (on every rank, as when the job is stopped)."""
    written, steps = [], []

    def audit(event: str, args: tuple) -> None:
        if event in ("open", "os.rename", "os.remove", "os.mkdir") and str(args[0]).startswith(str(out)):
            if event != "open" or args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                written.append(f"{event} {args[0]}")

    sys.addaudithook(audit)
    examples = stage1.training_examples

    def crashing(step, *args, **kwargs):
        steps.append(step)
        if step == crash_at:
            raise RuntimeError(f"stopped at step {step}")
        return examples(step, *args, **kwargs)

    stage1.training_examples = crashing
    try:
        with distributed.process_group(timeout=60):
            run(SHORT, out, eval_scenes=4)
    finally:
        (out.parent / f"writes{rank}.txt").write_text("\n".join(written))
        (out.parent / f"steps{rank}.txt").write_text(" ".join(map(str, steps)))


@pytest.mark.slow
def test_two_ranks_train_like_one_process_rank_0_alone_writes_and_a_stopped_run_resumes(tmp_path):
    run(SHORT, tmp_path / "one", eval_scenes=4)
    expected = load_file(tmp_path / "one" / "model" / "model.safetensors")

    out = tmp_path / "two"
    assert run_ranks(2, tmp_path, train_recording_writes, out, 6) == [1, 1]
    assert "stopped at step 6" in log_of(tmp_path, 0)
    assert "stage1.safetensors" in (tmp_path / "writes0.txt").read_text()  # rank 0 saved step 4
    assert (tmp_path / "writes1.txt").read_text() == ""
    assert not (out / "model").exists()

    assert run_ranks(2, tmp_path, train_recording_writes, out, None) == [0, 0]
    for rank in range(2):  # stage 0 was done; stage 1 resumes from rank 0's checkpoint of step 4
        assert (tmp_path / f"steps{rank}.txt").read_text() == "4 5 6 7 8 9"
    assert (tmp_path / "writes1.txt").read_text() == ""
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    weights = load_file(out / "model" / "model.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-3, atol=1e-4, msg=name)


HANG_SECONDS = 20


def failing_rank(rank: int, out: Path, how: str, stage: str) -> None:
    """`train` with a 5 s timeout, where rank 1 raises, is killed, or hangs for a while at step 3 of `stage`."""
    module = {"stage0": stage0, "stage1": stage1}[stage]
    examples = module.training_examples

    def failing(step, *args, **kwargs):
        if rank == 1 and step == 3:
            if how == "raise":
                raise RuntimeError("a failure at step 3")
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(HANG_SECONDS)  # then goes on, and finds rank 0 gone
        return examples(step, *args, **kwargs)

    module.training_examples = failing
    train(rank, out, "--timeout", "5")


@pytest.mark.slow
@pytest.mark.parametrize("how, stage", [("raise", "stage1"), ("kill", "stage0"), ("hang", "stage0")])
def test_a_rank_that_fails_stops_the_others_with_a_message(how, stage, tmp_path):
    codes = run_ranks(2, tmp_path, failing_rank, tmp_path / "run", how, stage)
    assert codes == [1, -signal.SIGKILL if how == "kill" else 1]
    if how == "hang":  # rank 0 stopped after its 5 s timeout, while rank 1 still slept
        assert run_ranks.seconds[0] + 5 < run_ranks.seconds[1]
    message = log_of(tmp_path, 0)
    assert "error: rank 0 of 2 stopped" in message and "timeout of 5 s" in message
    if how == "raise":
        assert "error: rank 1 of 2 stopped: a failure at step 3" in log_of(tmp_path, 1)


@pytest.mark.slow
def test_torchrun_runs_the_command_line_on_two_processes(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "pgemma.train"]
        + [*TRAIN, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("held-out scenes: 4") == 1  # rank 0 reports
    assert (tmp_path / "model" / "model.safetensors").exists()


def test_without_torchrun_there_is_one_process_and_nothing_is_exchanged(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.process_group():
        assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
        assert list(distributed.shard(range(8))) == list(range(8))
        loss = torch.tensor(2.0)
        assert distributed.global_mean(loss, torch.tensor(3)) is loss
        assert distributed.on_main(lambda: {"a": 1.0}) == {"a": 1.0}
