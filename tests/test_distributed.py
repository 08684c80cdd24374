"""Tests for pgemma.train.distributed: training and fine-tuning on 2 and 4 local processes (gloo on the CPU)
give the losses, gradients and weights of one process on the same global batch; rank 0 alone writes; a run
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

from pgemma.lora import ADAPTER_WEIGHTS_NAME
from pgemma.processor import PaliGemmaProcessor
from pgemma.train import distributed, stage0, stage1
from pgemma.train import finetune as ft
from pgemma.train.__main__ import main
from pgemma.train.pipeline import run
from pgemma.train.recipe import Recipe, StageConfig, build_model, build_tokenizer

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


def record_writes(out: Path) -> list[str]:
    """The list, filled as this process goes on, of every file it creates, writes, moves or deletes in `out`."""
    written = []

    def audit(event: str, args: tuple) -> None:
        if event in ("open", "os.rename", "os.remove", "os.mkdir") and str(args[0]).startswith(str(out)):
            if event != "open" or args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                written.append(f"{event} {args[0]}")

    sys.addaudithook(audit)
    return written


# ----------------------------------------------------------------------------------------------
# One step of each stage: loss and gradients


def first_step_recorder(results: dict[str, torch.Tensor]):
    """A stand-in for `train_loop` that takes no step: it puts in `results` the loss and (averaged) gradients
    of step 0 of the loss function it is given, and returns an empty curve."""

    def one_step(name, module, loss_fn, cfg, checkpoint, on_eval=None, slow=None):
        module.zero_grad(set_to_none=True)
        loss = loss_fn(0)
        loss.backward()
        distributed.average_gradients(module)
        results[f"{name}.loss"] = distributed.mean_over_ranks(loss.detach())
        results.update({f"{name}.{n}": p.grad for n, p in module.named_parameters() if p.grad is not None})
        return []

    return one_step


def assert_ranks_equal_one_process(folder: Path, world: int, expected: dict[str, torch.Tensor]) -> None:
    """The results each rank saved to folder/rank{rank}.safetensors equal one process's `expected`, up to the
    rounding of the sums, and each other to the bit."""
    ranks = [load_file(folder / f"rank{rank}.safetensors") for rank in range(world)]
    assert set(ranks[0]) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-4, atol=1e-6, msg=name)
        for other in ranks[1:]:  # every rank holds the same averaged gradients, to the bit
            assert torch.equal(other[name], ranks[0][name]), name


def first_steps(rank: int, folder: Path) -> None:
    """The loss and (averaged) gradients of step 0 of both stages, saved to folder/rank{rank}.safetensors.

    Each stage's own loss function is taken from its call to `train_loop`, which is replaced by one step.
    """
    results = {}
    stage0.train_loop = stage1.train_loop = first_step_recorder(results)  # a forked rank, or restored below
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
    tower = "vision_model.embeddings.patch_embedding.weight"
    assert {
        "stage 0.loss",
        "stage 0.log_t",
        f"stage 0.tower.{tower}",
        "stage 1.loss",
        f"stage 1.vision_tower.{tower}",
    } <= set(expected)
    assert run_ranks(world, tmp_path, first_steps, tmp_path) == [0] * world
    assert_ranks_equal_one_process(tmp_path, world, expected)


# ----------------------------------------------------------------------------------------------
# Fine-tuning: its first step, and a whole run


def finetune_settings(base: Path, mode: str, steps: int) -> ft.FinetuneConfig:
    """A fine-tuning of `steps` steps on a global batch of 4: 2 diamond scenes (rank 0's on 2 ranks), then 2 of
    the old world (rank 1's), so the ranks' slices hold different numbers of answer tokens."""
    stage = StageConfig(steps=steps, batch_size=4, warmup=1, checkpoint_every=2, eval_every=2)
    return ft.FinetuneConfig(base=str(base), mode=mode, rank=2, old_fraction=0.5, stage=stage, curve_scenes=1)


def finetune_first_step(rank: int, folder: Path, base: Path, mode: str) -> None:
    """The loss and (averaged) gradients of step 0 of a fine-tuning, saved to folder/rank{rank}.safetensors; the
    run then goes on without training to its evaluation and its result, in folder/run."""
    results = {}
    ft.train_loop = first_step_recorder(results)  # a forked rank, or restored by the test
    with distributed.process_group(timeout=60):
        ft.finetune(finetune_settings(base, mode, steps=1), folder / "run", eval_scenes=1)
    save_file({k: v.contiguous() for k, v in results.items()}, folder / f"rank{rank}.safetensors")


def finetune_first_step_recording(rank: int, folder: Path, base: Path, mode: str) -> None:
    """`finetune_first_step`, noting in folder/writes{rank}.txt every file the rank writes in folder/run, and
    in folder/seeds{rank}.txt the seeds of the examples it trained on."""
    written, seeds, examples = record_writes(folder / "run"), [], ft.finetune_examples

    def recording(*args):
        batch = examples(*args)
        seeds.extend(ex.scene.seed for ex in batch)
        return batch

    ft.finetune_examples = recording
    try:
        finetune_first_step(rank, folder, base, mode)
    finally:
        (folder / f"writes{rank}.txt").write_text("\n".join(written))
        (folder / f"seeds{rank}.txt").write_text(" ".join(map(str, seeds)))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_fine_tuning_gives_the_loss_and_gradients_of_one_process_and_rank_0_alone_writes(
    mode, base, tmp_path, monkeypatch
):
    monkeypatch.setattr(ft, "train_loop", ft.train_loop)  # finetune_first_step replaces it
    finetune_first_step(0, tmp_path / "one", base, mode)  # no torchrun variables: one process, the whole batch
    expected = load_file(tmp_path / "one" / "rank0.safetensors")
    trained = [name.split(".", 1)[1] for name in expected if not name.endswith(".loss")]
    if mode == "lora":
        assert trained and all(name.endswith(("lora_A", "lora_B")) for name in trained)
    else:
        assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in trained

    two = tmp_path / "two"
    two.mkdir()
    assert run_ranks(2, two, finetune_first_step_recording, two, base, mode) == [0, 0]
    assert_ranks_equal_one_process(two, 2, expected)
    cfg = finetune_settings(base, mode, steps=1)
    new = ft.new_task_world(RECIPE.world)
    seeds = [str(ex.scene.seed) for ex in ft.finetune_examples(0, cfg, new, RECIPE.world)]  # the global batch
    assert [(two / f"seeds{rank}.txt").read_text() for rank in range(2)] == [" ".join(seeds[:2]), " ".join(seeds[2:])]
    result = ft.ADAPTER_FOLDER if mode == "lora" else ft.MODEL_FOLDER
    assert {"recipe.json", "curves.json", result} <= {p.name for p in (two / "run").iterdir()}
    assert "curves.json" in (two / "writes0.txt").read_text()
    assert (two / "writes1.txt").read_text() == ""


def finetune_recording_steps(rank: int, out: Path, base: Path, crash_at: int | None) -> None:
    """A LoRA fine-tuning of `base` in `out` (4 steps, checkpoints at 2 and 4), noting in out/../writes{rank}.txt
    every file the rank writes in `out` and in out/../steps{rank}.txt the steps it trains; rank 1 alone raises
    at step `crash_at`."""
    written, steps, examples = record_writes(out), [], ft.finetune_examples

    def crashing(step, *args):
        steps.append(step)
        if rank == 1 and step == crash_at:
            raise RuntimeError(f"stopped at step {step}")
        return examples(step, *args)

    ft.finetune_examples = crashing
    try:
        with distributed.process_group(timeout=60):
            ft.finetune(finetune_settings(base, "lora", steps=4), out, eval_scenes=1)
    finally:
        (out.parent / f"writes{rank}.txt").write_text("\n".join(written))
        (out.parent / f"steps{rank}.txt").write_text(" ".join(map(str, steps)))


@pytest.mark.slow
def test_a_fine_tuning_whose_rank_fails_stops_resumes_from_rank_0s_checkpoint_and_ends_like_one_process(base, tmp_path):
    ft.finetune(finetune_settings(base, "lora", steps=4), tmp_path / "one", eval_scenes=1)
    expected = load_file(tmp_path / "one" / ft.ADAPTER_FOLDER / ADAPTER_WEIGHTS_NAME)

    out = tmp_path / "two"
    assert run_ranks(2, tmp_path, finetune_recording_steps, out, base, 3) == [1, 1]
    assert "rank 1 of 2 stopped: stopped at step 3" in log_of(tmp_path, 1)
    assert "rank 0 of 2 stopped" in log_of(tmp_path, 0) and "another rank stopped first" in log_of(tmp_path, 0)
    assert "finetune.safetensors" in (tmp_path / "writes0.txt").read_text()  # rank 0 saved step 2
    assert (tmp_path / "writes1.txt").read_text() == ""
    assert not (out / ft.ADAPTER_FOLDER).exists()

    assert run_ranks(2, tmp_path, finetune_recording_steps, out, base, None) == [0, 0]
    for rank in range(2):  # both resume from rank 0's checkpoint of step 2
        assert (tmp_path / f"steps{rank}.txt").read_text() == "2 3"
    assert (tmp_path / "writes1.txt").read_text() == ""
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    weights = load_file(out / ft.ADAPTER_FOLDER / ADAPTER_WEIGHTS_NAME)
    assert set(weights) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-3, atol=1e-4, msg=name)


# ----------------------------------------------------------------------------------------------
# Whole runs: the same weights, rank 0 alone writes, resuming, failing ranks


def train(rank: int, out: Path, *options: str) -> None:
    main([*TRAIN, "--out", str(out), *options])


def train_recording_writes(rank: int, out: Path, crash_at: int | None) -> None:
    """`run` the SHORT recipe, noting in out/../writes{rank}.txt every file rank `rank` creates, writes,
    moves or deletes in `out` and in out/../steps{rank}.txt the steps of stage 1 it trains, and raising at
    stage 1's step `crash_at` (on every rank, as when the job is stopped)."""
    written, steps = record_writes(out), []
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


def torchrun(*argv: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 -m pgemma.train ARGV`, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "pgemma.train", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


@pytest.mark.slow
def test_torchrun_runs_the_command_line_on_two_processes(tmp_path):
    result = torchrun(*TRAIN, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("held-out scenes: 4") == 1  # rank 0 reports
    assert (tmp_path / "model" / "model.safetensors").exists()


@pytest.mark.slow
def test_torchrun_runs_the_fine_tuning_command_line_on_two_processes(base, tmp_path):
    options = ["--mode", "lora", "--rank", "2", "--steps", "2", "--batch-size", "2", "--eval-every", "0"]
    result = torchrun(
        "finetune", str(base), "--out", str(tmp_path), *options, "--curve-scenes", "1", "--eval-scenes", "1"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("adapter written to") == 1  # rank 0 reports
    assert (tmp_path / ft.ADAPTER_FOLDER / ADAPTER_WEIGHTS_NAME).exists()


def test_without_torchrun_there_is_one_process_and_nothing_is_exchanged(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.process_group():
        assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
        assert list(distributed.shard(range(8))) == list(range(8))
        loss = torch.tensor(2.0)
        assert distributed.global_mean(loss, torch.tensor(3)) is loss
        assert distributed.on_main(lambda: {"a": 1.0}) == {"a": 1.0}
