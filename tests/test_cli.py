"""Tests for `python -m pgemma generate`: a real run on a tiny checkpoint, the shipped defaults, and clean errors."""

import importlib
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pgemma import shipped
from pgemma.__main__ import main
from pgemma.checkpoint import load_model
from pgemma.generate import Sampling, generate
from pgemma.processor import load_processor
from pgemma.world import split_of

SHIPPED_MISSING = not shipped.shipped_model_folder().is_dir()


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "shapes.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def broken_checkpoints(checkpoint, tmp_path_factory) -> dict[str, Path]:
    """Copies of the checkpoint: "ints" with int32 weights, "nan_config" with rms_norm_eps NaN."""
    folders = {name: tmp_path_factory.mktemp(name) / "checkpoint" for name in ("ints", "nan_config")}
    for folder in folders.values():
        shutil.copytree(checkpoint, folder)
    weights = load_file(checkpoint / "model.safetensors")
    save_file({key: t.to(torch.int32) for key, t in weights.items()}, folders["ints"] / "model.safetensors")
    config = json.loads((checkpoint / "config.json").read_text())
    config["text_config"]["rms_norm_eps"] = math.nan
    (folders["nan_config"] / "config.json").write_text(json.dumps(config))
    return folders


def pgemma(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pgemma", *map(str, args)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow  # a fresh Python imports torch: a few seconds
def test_generate_prints_the_answer(checkpoint, image_file):
    result = pgemma(
        "generate", "--model", checkpoint, "--image", image_file, "--prompt", "caption en", "--max-new-tokens", "6"
    )
    assert result.returncode == 0, result.stderr
    expected = generate(load_model(checkpoint), load_processor(checkpoint), image_file, "caption en", max_new_tokens=6)[
        0
    ]
    assert expected and result.stdout == expected + "\n"


@pytest.mark.slow
def test_bad_image_is_one_line_on_stderr(checkpoint, tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    result = pgemma("generate", "--model", checkpoint, "--image", tmp_path / "notes.jpg")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"pgemma: error: {str(tmp_path / 'notes.jpg')!r} is not an image file PIL can read"
    ]
    assert result.stdout == ""


def test_fast_gives_the_same_answer(checkpoint, image_file, capsys, monkeypatch):
    import pgemma.fast
    from pgemma.fast import linear as fast_linear

    prepare_for_speed, prepared = pgemma.fast.prepare_for_speed, []
    monkeypatch.setattr(
        pgemma.fast,
        "prepare_for_speed",
        lambda model, **options: prepared.append(options) or prepare_for_speed(model, **options),
    )
    monkeypatch.setattr(fast_linear, "SWAP_MIN_WEIGHTS", 0)  # a tiny checkpoint: swap and use every layer
    monkeypatch.setattr(fast_linear, "ONEDNN_MIN_MULTIPLY_ADDS", 0)
    argv = [
        "generate",
        "--model",
        str(checkpoint),
        "--image",
        str(image_file),
        "--max-new-tokens",
        "8",
        "--temperature",
        "1.5",
        "--seed",
        "3",
    ]  # sampled: varied text from a tiny random model
    assert main(argv) == 0
    default = capsys.readouterr().out
    calls = []
    monkeypatch.setattr(
        fast_linear, "onednn_linear", lambda *args: calls.append(1) or torch.nn.functional.linear(*args)
    )
    assert main(argv + ["--fast"]) == 0
    assert capsys.readouterr().out == default and default.strip()
    assert calls or not fast_linear.onednn_available()
    assert prepared == [{}]  # --fast is prepare_for_speed, without compiling the decoder


def test_sampling_options_are_reproducible(checkpoint, image_file, capsys):
    argv = [
        "generate",
        "--model",
        str(checkpoint),
        "--image",
        str(image_file),
        "--max-new-tokens",
        "6",
        "--temperature",
        "1.5",
        "--top-k",
        "40",
        "--top-p",
        "0.95",
        "--seed",
        "3",
    ]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first
    assert main(argv[:-1] + ["4"]) == 0
    assert capsys.readouterr().out != first


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], Sampling.greedy()),
        (["--seed", "3"], Sampling(do_sample=True, seed=3)),
        (["--temperature", "0.8"], Sampling(do_sample=True, temperature=0.8)),
        (["--top-k", "40", "--top-p", "0.9"], Sampling(do_sample=True, top_k=40, top_p=0.9)),
        (
            ["--temperature", "1.5", "--top-k", "40", "--top-p", "0.95", "--seed", "3"],
            Sampling(do_sample=True, temperature=1.5, top_k=40, top_p=0.95, seed=3),
        ),
    ],
)
def test_sampling_flags_give_the_settings(checkpoint, image_file, monkeypatch, flags, expected):
    calls = []
    # The module, not the function that pgemma/__init__.py puts under the same name.
    monkeypatch.setattr(
        importlib.import_module("pgemma.generate"), "generate", lambda *args, **kwargs: calls.append(kwargs) or [""]
    )
    assert main(["generate", "--model", str(checkpoint), "--image", str(image_file), *flags]) == 0
    assert [call["sampling"] for call in calls] == [expected]


def test_without_image_a_new_scene_is_drawn_saved_and_answered(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--model", str(checkpoint), "--max-new-tokens", "5"]) == 0
    captured = capsys.readouterr()
    [scene] = tmp_path.glob("scene_*.png")
    assert split_of(int(scene.stem.removeprefix("scene_"))) == "heldout"
    assert (
        captured.err == f"pgemma: no --image given: drew scene {scene.stem[6:]} of the shapes world, saved to {scene}\n"
    )
    expected = generate(load_model(checkpoint), load_processor(checkpoint), scene, "caption en", max_new_tokens=5)[0]
    assert captured.out == expected + "\n"


def test_without_model_a_missing_shipped_model_is_named(image_file, monkeypatch, capsys):
    monkeypatch.setattr(shipped, "SHIPPED_MODEL", "no_such_model")
    assert main(["generate", "--image", str(image_file)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("pgemma: error: no --model given and the shipped model folder ")
    assert "no_such_model' is missing; reinstall pgemma, or pass --model CHECKPOINT_DIR" in captured.err
    assert captured.out == ""


@pytest.mark.skipif(
    SHIPPED_MISSING,
    reason=f"the shipped model is not in {shipped.shipped_model_folder()} (train it: python -m pgemma.train)",
)
@pytest.mark.parametrize(
    "prompt, pattern",
    [
        ("caption en", r"a (red|green|blue|yellow) (circle|square|triangle)( left of a \w+ \w+)?"),
        ("answer en how many shapes?", r"\d"),
        ("detect circle ; square ; triangle", r".*<loc\d{4}>.*"),  # the scene may lack some kinds
    ],
)
def test_no_arguments_use_the_shipped_model_on_a_new_scene(tmp_path, monkeypatch, capsys, prompt, pattern):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--prompt", prompt]) == 0
    captured = capsys.readouterr()
    assert len(list(tmp_path.glob("scene_*.png"))) == 1 and "drew scene" in captured.err
    assert re.fullmatch(pattern, captured.out.strip()), captured.out


@pytest.mark.slow
@pytest.mark.skipif(SHIPPED_MISSING, reason="the shipped model is not installed")
def test_python_m_pgemma_generate_with_no_arguments(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pgemma", "generate"], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("a ") and len(list(tmp_path.glob("scene_*.png"))) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{missing}", "--image", "{image}"], "does not exist or is not a folder"),
        (["--model", "{checkpoint}", "--image", "{missing}"], "does not exist or is not a file"),
        (["--model", "{checkpoint}", "--image", "{empty}"], "is empty"),
        (["--model", "{image_folder}", "--image", "{image}"], "no config.json"),
        (["--model", "{checkpoint}", "--image", "{image}", "--top-p", "2"], "top_p must be in (0, 1]"),
        (["--model", "{checkpoint}", "--image", "{image}", "--top-k", "0"], "top_k must be a positive int, got 0"),
        (
            ["--model", "{checkpoint}", "--image", "{image}", "--temperature", "nan"],
            "temperature must be a finite number, got nan",
        ),
        (["--model", "{checkpoint}", "--image", "{image}", "--device", "nonsense"], "is not a torch device"),
        (
            ["--model", "{checkpoint}", "--image", "{image}", "--prompt", "a very long prompt " * 40],
            "longer than the model's context of 128",
        ),
        (["--model", "{checkpoint}", "--image", "{image_folder}"], "does not exist or is not a file"),
        (["--model", "{image}", "--image", "{image}"], "does not exist or is not a folder"),
        (["--model", "{checkpoint}", "--image", "{image}", "--device", "meta"], "not on meta"),
        (["--model", "{checkpoint}", "--image", "{image}", "--device", "cpu:1"], "there is one cpu device"),
        (["--model", "{checkpoint}", "--image", "{image}", "--device", ""], "is not a torch device"),
        (["--model", "{checkpoint}", "--image", "{image}", "--device", "xla"], "pgemma computes on cpu, cuda, mps"),
        (["--model", "{checkpoint}", "--image", "{image}", "--temperature", "inf"], "must be a finite number"),
        (["--model", "{checkpoint}", "--image", "{image}", "--temperature", "-1"], "temperature must be > 0"),
        (["--model", "{checkpoint}", "--image", "{image}", "--top-p", "nan"], "top_p must be in (0, 1]"),
        (["--model", "{checkpoint}", "--image", "{image}", "--top-k", "-1"], "top_k must be a positive int"),
        (["--model", "{checkpoint}", "--image", "{image}", "--seed", str(2**64)], "seed must be in [-2**63, 2**64)"),
        (
            ["--model", "{checkpoint}", "--image", "{image}", "--max-new-tokens", str(10**30)],
            "exceeds the model's context of 128; lower max_new_tokens",
        ),
        (["--model", "{checkpoint}", "--image", "{image}", "--prompt", "caf\udce9"], "is not valid Unicode"),
        (["--model", "{checkpoint}", "--image", "{image}", "--prompt", "<image>"], "contains <image>"),
        (["--model", "{ints}", "--image", "{image}"], "stored as I32, not as floating-point weights"),
        (["--model", "{nan_config}", "--image", "{image}"], "text_config.rms_norm_eps must be a finite positive"),
    ],
)
def test_bad_input_exits_2_with_a_message(checkpoint, broken_checkpoints, image_file, tmp_path, capsys, args, message):
    (tmp_path / "empty.png").write_bytes(b"")
    paths = {
        "checkpoint": checkpoint,
        "image": image_file,
        "missing": tmp_path / "missing",
        "empty": tmp_path / "empty.png",
        "image_folder": image_file.parent,
        **broken_checkpoints,
    }
    assert main(["generate", *(a.format(**paths) for a in args)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("pgemma: error: ") and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and captured.out == ""


def test_a_device_this_machine_lacks_exits_2_before_loading(checkpoint, image_file, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for device in ("cuda", "cuda:0", "mps"):
        assert main(["generate", "--model", str(checkpoint), "--image", str(image_file), "--device", device]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(f"pgemma: error: device '{device}': ") and captured.out == ""
        assert "is not available on this machine; use cpu" in captured.err
        assert len(captured.err.splitlines()) == 1


def test_a_kv_cache_too_large_for_the_machine_exits_2(checkpoint, image_file, capsys, monkeypatch):
    monkeypatch.setattr(importlib.import_module("pgemma.generate"), "available_bytes", lambda device: 1000)
    assert main(["generate", "--model", str(checkpoint), "--image", str(image_file), "--max-new-tokens", "5"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("pgemma: error: the KV cache for 1 row(s) of ")
    assert "but cpu has 1,000 bytes (0.0 GiB) available; lower max_new_tokens" in captured.err


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "the following arguments are required: command (see pgemma --help)"),
        (["generate", "--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
        (["generate", "--max-new-tokens", "0"], "argument --max-new-tokens: must be a positive int, got 0"),
        (["generate", "--max-new-tokens", "-1"], "argument --max-new-tokens: must be a positive int, got -1"),
        (["generate", "--max-new-tokens", "1e3"], "argument --max-new-tokens: invalid positive_int value: '1e3'"),
        (["generate", "--temperature", "hot"], "argument --temperature: invalid float value: 'hot'"),
        (["generate", "--top-k", "1.5"], "argument --top-k: invalid int value: '1.5'"),
        (["generate", "--image"], "argument --image: expected one argument"),
        (["generate", "--colour", "red"], "unrecognized arguments: --colour red"),
        (["train"], "argument command: invalid choice: 'train'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(capsys, monkeypatch, tmp_path, args, message):
    monkeypatch.chdir(tmp_path)  # were a run to start, its drawn scene lands here
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("pgemma: error: ") and message in captured.err, captured.err
    assert len(captured.err.splitlines()) == 1 and captured.out == ""


@pytest.mark.parametrize(
    "flags",
    [["--dtype", "float16"], ["--dtype", "bfloat16"], ["--prompt", ""], ["--seed", "-1"], ["--top-k", str(10**30)]],
)
def test_unusual_but_valid_values_run(checkpoint, image_file, capsys, flags):
    assert (
        main(["generate", "--model", str(checkpoint), "--image", str(image_file), "--max-new-tokens", "2", *flags]) == 0
    )
    assert capsys.readouterr().err == ""


def test_help_exits_0(capsys):
    assert main(["generate", "--help"]) == 0
    assert "--max-new-tokens" in capsys.readouterr().out


@pytest.mark.slow  # a fresh Python imports torch: a few seconds
def test_a_bad_device_is_one_line_without_traceback_in_a_real_process(checkpoint, image_file):
    result = pgemma("generate", "--model", checkpoint, "--image", image_file, "--device", "meta")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "pgemma: error: device 'meta': pgemma computes on cpu, cuda, mps, not on meta (it holds shapes, not numbers)"
    ]
