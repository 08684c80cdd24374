"""Tests for `python -m pgemma generate`: a real run on a tiny checkpoint, and clean errors."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from test_generate import build_checkpoint

from pgemma.__main__ import main
from pgemma.checkpoint import load_model
from pgemma.generate import generate
from pgemma.processor import load_processor


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pytest.importorskip("transformers")
    return build_checkpoint(tmp_path_factory.mktemp("cli_checkpoint"))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "shapes.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def pgemma(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pgemma", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow  # a fresh Python imports torch: a few seconds
def test_generate_prints_the_answer(checkpoint, image_file):
    result = pgemma("generate", "--model", checkpoint, "--image", image_file, "--prompt", "caption en",
                    "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    expected = generate(load_model(checkpoint), load_processor(checkpoint), image_file, "caption en",
                        max_new_tokens=6)[0]
    assert expected and result.stdout == expected + "\n"


@pytest.mark.slow
def test_bad_image_is_one_line_on_stderr(checkpoint, tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    result = pgemma("generate", "--model", checkpoint, "--image", tmp_path / "notes.jpg")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"pgemma: error: {str(tmp_path / 'notes.jpg')!r} is not an "
                                                  "image file PIL can read"]
    assert result.stdout == ""


def test_sampling_options_are_reproducible(checkpoint, image_file, capsys):
    argv = ["generate", "--model", str(checkpoint), "--image", str(image_file), "--max-new-tokens", "6",
            "--temperature", "1.5", "--top-k", "40", "--top-p", "0.95", "--seed", "3"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first
    assert main(argv[:-1] + ["4"]) == 0
    assert capsys.readouterr().out != first


@pytest.mark.parametrize("args, message", [
    (["--image", "{image}"], "no --model given, and this version of pgemma ships no default model"),
    (["--model", "{checkpoint}"], "no --image given"),
    (["--model", "{missing}", "--image", "{image}"], "does not exist or is not a folder"),
    (["--model", "{checkpoint}", "--image", "{missing}"], "does not exist or is not a file"),
    (["--model", "{checkpoint}", "--image", "{empty}"], "is empty"),
    (["--model", "{image_folder}", "--image", "{image}"], "no config.json"),
    (["--model", "{checkpoint}", "--image", "{image}", "--top-p", "2"], "top_p must be in (0, 1]"),
    (["--model", "{checkpoint}", "--image", "{image}", "--device", "nonsense"], "is not a torch device"),
    (["--model", "{checkpoint}", "--image", "{image}", "--prompt", "a very long prompt " * 40],
     "longer than the model's context of 128"),
])
def test_bad_input_exits_2_with_a_message(checkpoint, image_file, tmp_path, capsys, args, message):
    (tmp_path / "empty.png").write_bytes(b"")
    paths = {"checkpoint": checkpoint, "image": image_file, "missing": tmp_path / "missing",
             "empty": tmp_path / "empty.png", "image_folder": image_file.parent}
    assert main(["generate", *(a.format(**paths) for a in args)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("pgemma: error: ") and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and captured.out == ""


def test_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--dtype", "float64"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'float64'" in capsys.readouterr().err
