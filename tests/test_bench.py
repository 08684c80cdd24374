"""The benchmark script's machinery on a tiny checkpoint: what it compares, not how fast it is."""

import subprocess
import sys

import pytest
import torch

from pgemma.checkpoint import load_model
from pgemma.profiling import random_batch
from tools.book import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench  # noqa: E402


@pytest.mark.slow
def test_compare_generation_alternates_the_two_libraries_on_one_checkpoint(reference_checkpoint, reference_model):
    path = reference_checkpoint("multi_query")
    model = bench.prepare_for_speed(load_model(path), compile_decoder=True)  # the settings of every figure
    hf_model = reference_model("multi_query")
    batch = random_batch(model.config, batch_size=2, text_length=5, seed=0)
    result = bench.compare_generation(model, hf_model, batch, new_tokens=4, repeats=2)
    assert result["identical"]  # greedy: the same tokens, so the figures count
    for library in ("pgemma", "transformers"):
        assert result[library]["tokens"] == 4
        assert result[library]["prefill_s"] > 0 and result[library]["decode_tok_s"] > 0
    assert result["copy_bandwidth"] > 1e8  # bytes per second, measured between the runs


def test_same_tokens_ignores_what_follows_eos():
    eos, pad = 1, 0
    ours, theirs = torch.tensor([[5, 1, 0, 0]]), torch.tensor([[5, 1, 7, 7]])
    assert bench.same_tokens(ours, theirs, eos, pad)
    assert not bench.same_tokens(ours, torch.tensor([[6, 1, 0, 0]]), eos, pad)
    assert not bench.same_tokens(ours, theirs[:, :3], eos, pad)


def test_decode_weight_bytes_counts_the_decoder_and_the_tied_head_once(reference_checkpoint):
    model = load_model(reference_checkpoint("multi_query"))
    decoder = model.language_model.model
    expected = sum(p.numel() for p in decoder.parameters())  # layers, final norm and the embedding (= head)
    assert bench.decode_weight_bytes(model) == 4 * expected


def test_cpu_clock_refuses_several_threads():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--clock", "cpu", "--threads", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "use it with --threads 1" in done.stderr


def test_benchmark_configs_have_the_stated_sizes():
    from pgemma.paligemma import PaliGemmaForConditionalGeneration

    def parameters(config) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in PaliGemmaForConditionalGeneration(config).parameters())

    assert 2.1e6 < parameters(bench.small_config()) < 2.3e6  # the shipped model
    assert bench.small_config(1024).text_config.max_position_embeddings == 1024
    assert 3.0e8 < parameters(bench.config_300m()) < 3.3e8
