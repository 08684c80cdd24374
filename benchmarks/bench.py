"""pgemma against transformers' PaliGemma, on the same checkpoints, in one run.

    .venv/bin/python benchmarks/bench.py            # the full run (about 10 minutes)
    .venv/bin/python benchmarks/bench.py --quick    # fewer repeats and tokens (a few minutes)

Two checkpoints, both float32:

- "small": the model shipped in ``pgemma/assets`` (2.2M parameters: 64 px images, patch 16,
  SigLIP 128 wide x 4 layers, Gemma 128 wide x 4 layers, 1200 tokens);
- "300M": a random PaliGemma with PaliGemma 1's real layer shapes (SigLIP 1152 wide with a 4304
  MLP, Gemma 2048 wide with 8 query heads, 1 kv head of 256 and a 16384 GeGLU) but fewer layers,
  a 16384-token vocabulary and 112 px images, written by transformers' ``save_pretrained``.

Random checkpoints are built once into ``--workdir`` (default ``~/.cache/pgemma-bench``), never
into the repository. The two libraries are measured alternately (pgemma, transformers, pgemma,
...) in the same process, and every figure is a median over repeats. The machine's speed drifts,
so only the ratios pgemma / transformers (and the fractions of the bandwidth measured here, in
the same run) mean anything; the seconds are printed for orientation.

Loading and memory are measured in a fresh subprocess per measurement: resident memory (RSS)
peak after the imports are done, read from /proc/self/status (VmHWM, reset through
/proc/self/clear_refs after the imports).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from pgemma.checkpoint import load_model
from pgemma.config import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig, load_config
from pgemma.fast import prepare_for_speed
from pgemma.generate import generate_tokens
from pgemma.paligemma import PaliGemmaForConditionalGeneration
from pgemma.processor import ProcessorBatch
from pgemma.profiling import random_batch, time_decoding
from pgemma.shipped import shipped_model_folder

TEXT_LENGTH = 12  # <bos> + 11 random prompt ids after the image tokens
# The clock of generation timings: wall-clock time by default; --clock cpu takes process CPU time,
# which other processes on a shared machine do not inflate by taking turns on the cores, but which
# adds up the time of every thread, so it is only meaningful with one thread.
clock = time.perf_counter


# pgemma's settings for every figure, printed with them: load_model(path), then prepare_for_speed(model,
# compile_decoder=True), which composes these four.
PGEMMA_SETTINGS = (
    "pgemma.fast.prepare_for_speed(compile_decoder=True): use_sdpa + fuse_projections + "
    "use_fast_linear + compile_decoder"
)


# ----------------------------------------------------------------------------------------------
# Checkpoints


def small_config(max_position_embeddings: int | None = None) -> PaliGemmaConfig:
    """The shipped model's config, optionally with a longer context (its own is 512 tokens)."""
    config = load_config(shipped_model_folder())
    if max_position_embeddings is None:
        return config
    return replace(config, text_config=replace(config.text_config, max_position_embeddings=max_position_embeddings))


def config_300m() -> PaliGemmaConfig:
    """PaliGemma 1's layer shapes, 4 SigLIP + 2 Gemma layers, 16384 tokens, 112 px: 317M parameters."""
    return PaliGemmaConfig(
        vision_config=SiglipVisionConfig(num_hidden_layers=4, image_size=112),
        text_config=GemmaConfig(vocab_size=16384, num_hidden_layers=2, max_position_embeddings=1024),
        image_token_index=16383,
    )


def random_checkpoint(workdir: Path, name: str, config: PaliGemmaConfig) -> Path:
    """A transformers-written random checkpoint in ``workdir/name``, built on first use."""
    from pgemma.reference import build_reference_checkpoint

    path = workdir / name
    if not (path / "config.json").is_file():
        print(f"building {path} (once) ...", flush=True)
        build_reference_checkpoint(path, config, seed=0)
    return path


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def decode_weight_bytes(model: PaliGemmaForConditionalGeneration) -> int:
    """Bytes of weights one decode step reads: every decoder layer, the final norm, the output head.

    The output head is the (tied) embedding matrix, read whole for the logits; the vision tower
    and the projector are not used after the prefill.
    """
    decoder = model.language_model
    params = [*decoder.model.layers.parameters(), *decoder.model.norm.parameters(), decoder.lm_head.weight]
    return sum(p.numel() * p.element_size() for p in params)


# ----------------------------------------------------------------------------------------------
# The machine


def copy_bandwidth(megabytes: int = 256, repeats: int = 7) -> float:
    """Bytes per second of ``dst.copy_(src)`` on ``megabytes`` of float32, counting read + write (STREAM)."""
    src = torch.rand(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start = clock()
        dst.copy_(src)
        times.append(clock() - start)
    return 2 * src.numel() * 4 / statistics.median(times)


def read_bandwidth(megabytes: int = 256, repeats: int = 7) -> float:
    """Bytes per second of ``src.sum()``: reading only, as a decode step reads its weights."""
    src = torch.rand(megabytes * 2**20 // 4)
    src.sum()
    times = []
    for _ in range(repeats):
        start = clock()
        src.sum()
        times.append(clock() - start)
    return src.numel() * 4 / statistics.median(times)


def machine_facts() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    memory = next(line.split(":", 1)[1].strip() for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    load = os.getloadavg()
    import transformers

    return (
        f"{platform.platform()}, {cpu}, {os.cpu_count()} CPUs, {memory} RAM, load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; Python {platform.python_version()}, torch "
        f"{torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} torch thread(s)"
    )


# ----------------------------------------------------------------------------------------------
# Generation, timed token by token, for both libraries


def pgemma_generate(
    model: PaliGemmaForConditionalGeneration, batch: ProcessorBatch, new_tokens: int
) -> tuple[list[float], torch.Tensor]:
    """(arrival time of each token after the call, tokens int[B, n]) from pgemma's greedy loop."""
    times, tokens = [], []
    start = clock()
    for token in generate_tokens(model, batch, max_new_tokens=new_tokens):
        times.append(clock() - start)
        tokens.append(token)
    return times, torch.stack(tokens, dim=1)


class _ArrivalTimes:
    """A transformers streamer that notes when each new token arrives (the first put is the prompt)."""

    def __init__(self):
        self.start, self.times, self.prompt_seen = clock(), [], False

    def put(self, value: torch.Tensor) -> None:
        if self.prompt_seen:
            self.times.append(clock() - self.start)
        self.prompt_seen = True

    def end(self) -> None:
        pass


def transformers_generate(model, batch: ProcessorBatch, new_tokens: int) -> tuple[list[float], torch.Tensor]:
    """The same as ``pgemma_generate`` with transformers' ``generate`` (greedy, its KV cache)."""
    streamer = _ArrivalTimes()
    with torch.no_grad():
        out = model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            token_type_ids=batch.token_type_ids,
            pixel_values=batch.pixel_values,
            max_new_tokens=new_tokens,
            do_sample=False,
            streamer=streamer,
            pad_token_id=model.config.text_config.pad_token_id,
        )
    return streamer.times, out[:, batch.input_ids.shape[1] :]


def same_tokens(ours: torch.Tensor, theirs: torch.Tensor, eos: int, pad: int) -> bool:
    """Greedy answers equal, ignoring what each library writes after a row's <eos>."""
    if ours.shape[1] != theirs.shape[1]:
        return False
    for a, b in zip(ours.tolist(), theirs.tolist()):
        a, b = a[: a.index(eos) + 1] if eos in a else a, b[: b.index(eos) + 1] if eos in b else b
        if a != b:
            return False
    return True


def compare_generation(model, hf_model, batch: ProcessorBatch, new_tokens: int, repeats: int) -> dict:
    """Prefill latency and decode tokens/s of both libraries, alternating, medians over repeats.

    The copy bandwidth is measured in every round too, between the two libraries: the machine's
    speed drifts over minutes, and the decode bandwidth is a fraction of the one measured alongside.
    """
    runs = {"pgemma": [], "transformers": []}
    bandwidths = []
    outputs = {}
    functions = {
        "pgemma": lambda: pgemma_generate(model, batch, new_tokens),
        "transformers": lambda: transformers_generate(hf_model, batch, new_tokens),
    }
    for function in functions.values():  # warm-up, untimed
        function()
    for _ in range(repeats):
        for name, function in functions.items():
            times, tokens = function()
            runs[name].append(times)
            outputs[name] = tokens
            if name == "pgemma":
                bandwidths.append(copy_bandwidth(repeats=3))
    result = {"copy_bandwidth": statistics.median(bandwidths)}
    rows = batch.input_ids.shape[0]
    for name, times in runs.items():
        steps = [len(t) - 1 for t in times]
        result[name] = {
            "prefill_s": statistics.median(t[0] for t in times),
            "decode_tok_s": statistics.median(rows * n / (t[-1] - t[0]) for t, n in zip(times, steps) if n > 0)
            if min(steps) > 0
            else float("nan"),
            "tokens": outputs[name].shape[1],
        }
    config = model.config
    result["identical"] = same_tokens(
        outputs["pgemma"], outputs["transformers"], config.eos_token_id, config.pad_token_id
    )
    return result


# ----------------------------------------------------------------------------------------------
# Loading and memory, each in a fresh process


def _memory_kb(field: str) -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))


def child(library: str, path: str, batch_size: int, new_tokens: int, threads: int) -> None:
    """Run in a fresh interpreter: load, then generate; print time and peak RSS above the imports.

    pgemma's load is ``load_model``; ``prepare_for_speed`` follows it, so the copy fusing makes
    of the q/k/v and gate/up weights counts in the generation's peak.

    The interpreter imports only what a user of the library would (this script's top-level imports).
    """
    torch.set_num_threads(threads)
    if library == "transformers":
        import transformers

        _ = transformers.PaliGemmaForConditionalGeneration  # its lazy import, before the baseline as pgemma's
    # Python's garbage collector runs a full pass after a number of allocations that the imports
    # have mostly used up: without a pass here, the load pays for one (about 50 ms on the small
    # model), and whether it does depends on which modules the script imported.
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS: peaks from here on
    baseline = _memory_kb("VmRSS")
    start = time.perf_counter()
    if library == "pgemma":
        model = load_model(path)
    else:
        model = transformers.PaliGemmaForConditionalGeneration.from_pretrained(path).eval()
    load_s = time.perf_counter() - start
    load_peak = _memory_kb("VmHWM") - baseline
    if library == "pgemma":  # preparing for fast generation counts in the generation's peak, not the load's
        prepare_for_speed(model, compile_decoder=True)
    config = load_config(path)
    batch = random_batch(config, batch_size, TEXT_LENGTH, seed=1)
    (pgemma_generate if library == "pgemma" else transformers_generate)(model, batch, new_tokens)
    generate_peak = _memory_kb("VmHWM") - baseline
    print(
        json.dumps({"load_s": load_s, "load_peak_bytes": load_peak * 1024, "generate_peak_bytes": generate_peak * 1024})
    )


def compare_loading(path: Path, repeats: int, batch_size: int, new_tokens: int, threads: int) -> dict:
    runs = {"pgemma": [], "transformers": []}
    for _ in range(repeats):
        for library in runs:
            command = [
                sys.executable,
                __file__,
                "--child",
                library,
                str(path),
                str(batch_size),
                str(new_tokens),
                "--threads",
                str(threads),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[library].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        library: {key: statistics.median(run[key] for run in values) for key in values[0]}
        for library, values in runs.items()
    }


# ----------------------------------------------------------------------------------------------
# The KV cache and the chunked sigmoid loss (pgemma only)


def kv_cache_speedup(new_tokens: int, repeats: int) -> dict:
    """Total time of ``new_tokens`` greedy tokens without / with the cache: the shipped model's shape, random."""
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(small_config(max_position_embeddings=1024), use_sdpa=True).eval()
    batch = random_batch(model.config, 1, TEXT_LENGTH, seed=0)
    cached = time_decoding(model, batch, new_tokens, use_cache=True, repeats=repeats)
    recomputed = time_decoding(model, batch, new_tokens, use_cache=False, repeats=1, warmup=0)
    return {
        "cached_s": cached.total_seconds,
        "recomputed_s": recomputed.total_seconds,
        "speedup": recomputed.total_seconds / cached.total_seconds,
    }


def sigmoid_loss_memory(batch_size: int, chunk_size: int, width: int = 64) -> dict:
    """Peak bytes of live tensors for loss + backward: the full B x B matrix against chunks."""
    from pgemma.contrastive import chunked_sigmoid_loss, peak_memory, sigmoid_loss

    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(batch_size, width, generator=generator), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(batch_size, width, generator=generator), dim=-1)
    log_t, bias = torch.tensor(10.0).log(), torch.tensor(-10.0)

    def run(loss_fn) -> tuple[int, float]:
        leaves = [x.clone().requires_grad_() for x in (image, text, log_t, bias)]
        loss = []
        peak = peak_memory(lambda: (loss.append(loss_fn(*leaves)), loss[0].backward()))
        return peak, loss[0].item()

    full, full_loss = run(sigmoid_loss)
    chunked, chunked_loss = run(lambda *a: chunked_sigmoid_loss(*a, chunk_size=chunk_size))
    return {
        "full_bytes": full,
        "chunked_bytes": chunked,
        "ratio": chunked / full,
        "same_loss": abs(full_loss - chunked_loss) <= 1e-4 * abs(full_loss),
    }


# ----------------------------------------------------------------------------------------------
# The report


def ratio_line(label: str, ours: float, theirs: float, unit: str, scale: float = 1.0, digits: int = 1) -> str:
    return (
        f"  {label:<28} pgemma {ours * scale:10.{digits}f} {unit:<6} transformers {theirs * scale:10.{digits}f} "
        f"{unit:<6} ratio {ours / theirs:5.2f}"
    )


def benchmark_checkpoint(name: str, path: Path, args: argparse.Namespace) -> None:
    import transformers

    print(f"\n== {name}: {path}")
    model = prepare_for_speed(load_model(path), compile_decoder=True)
    hf_model = transformers.PaliGemmaForConditionalGeneration.from_pretrained(path).eval()
    params = sum(p.numel() for p in model.parameters())
    size = checkpoint_bytes(path)
    weights = decode_weight_bytes(model)
    print(
        f"  {params / 1e6:.1f}M parameters, checkpoint {size / 2**20:.1f} MiB, "
        f"{weights / 2**20:.1f} MiB of weights read per decode step; transformers attention: "
        f"{hf_model.config._attn_implementation}, pgemma: {PGEMMA_SETTINGS}"
    )
    new_tokens = args.new_tokens_small if name == "small" else args.new_tokens_300m
    for batch_size in (1, 8):
        batch = random_batch(model.config, batch_size, TEXT_LENGTH, seed=batch_size)
        result = compare_generation(model, hf_model, batch, new_tokens, args.repeats)
        ours, theirs = result["pgemma"], result["transformers"]
        verdict = "identical" if result["identical"] else "DIFFERENT: the figures below do not count"
        print(f"  batch {batch_size}, {ours['tokens']} new tokens, greedy outputs {verdict}")
        print(ratio_line("prefill (image + prompt)", ours["prefill_s"], theirs["prefill_s"], "ms", 1e3))
        print(ratio_line("decode, KV cache", ours["decode_tok_s"], theirs["decode_tok_s"], "tok/s"))
        if batch_size == 1:
            copy = result["copy_bandwidth"]
            print(f"  copy bandwidth, measured between the runs: {copy / 1e9:.2f} GB/s")
            for library in ("pgemma", "transformers"):
                achieved = weights * result[library]["decode_tok_s"]
                print(
                    f"  {library:<13} decode bandwidth {achieved / 1e9:6.2f} GB/s = "
                    f"{achieved / copy:5.1%} of the copy bandwidth"
                )
    del model, hf_model
    loading = compare_loading(path, args.load_repeats, 8, new_tokens, args.threads)
    ours, theirs = loading["pgemma"], loading["transformers"]
    print(ratio_line("load time", ours["load_s"], theirs["load_s"], "ms", 1e3))
    print(ratio_line("load peak RSS", ours["load_peak_bytes"], theirs["load_peak_bytes"], "MiB", 2**-20))
    print(
        f"  {'':<28} pgemma {ours['load_peak_bytes'] / size:.2f}x, transformers "
        f"{theirs['load_peak_bytes'] / size:.2f}x the checkpoint's size"
    )
    print(
        ratio_line(
            "generation peak RSS (B=8)", ours["generate_peak_bytes"], theirs["generate_peak_bytes"], "MiB", 2**-20
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and tokens: a few minutes")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path.home() / ".cache" / "pgemma-bench",
        help="where the random checkpoints are built (outside the repository)",
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch threads for both libraries (default: one per CPU)"
    )
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="wall",
        help="generation timings in wall-clock time (default) or process CPU time (one thread only)",
    )
    parser.add_argument("--only", choices=["small", "300M"], help="benchmark one checkpoint only")
    parser.add_argument("--child", nargs=4, metavar=("LIBRARY", "PATH", "BATCH", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu adds up the CPU time of every thread: use it with --threads 1")
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.child:
        library, path, batch_size, new_tokens = args.child
        child(library, path, int(batch_size), int(new_tokens), args.threads)
        return
    args.repeats, args.load_repeats = (3, 2) if args.quick else (7, 3)
    args.new_tokens_small, args.new_tokens_300m = (32, 8) if args.quick else (64, 32)
    kv_tokens, sigmoid_batch = (128 if args.quick else 512), 8192

    print(
        f"pgemma vs transformers, {datetime.datetime.now():%Y-%m-%d %H:%M}, "
        f"{'--quick' if args.quick else 'full run'}, generation timed in {args.clock} time"
    )
    print(machine_facts())
    bandwidth = copy_bandwidth()
    print(
        f"copy bandwidth (torch copy_ of 256 MiB, read + write, {args.clock} time): {bandwidth / 1e9:.2f} GB/s; "
        f"read only (sum): {read_bandwidth() / 1e9:.2f} GB/s"
    )

    args.workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = {
        "small": shipped_model_folder(),
        "300M": random_checkpoint(args.workdir, "paligemma-300m-random", config_300m()),
    }
    for name, path in checkpoints.items():
        if args.only in (None, name):
            benchmark_checkpoint(name, path, args)

    print(f"\n== KV cache (pgemma, small model's shape, batch 1, {kv_tokens} new tokens)")
    kv = kv_cache_speedup(kv_tokens, repeats=1 if args.quick else 3)
    print(
        f"  with the cache {kv['cached_s']:.2f} s, recomputing everything {kv['recomputed_s']:.2f} s: "
        f"{kv['speedup']:.1f}x faster"
    )

    print(f"\n== Sigmoid loss, forward + backward, batch {sigmoid_batch}")
    sigmoid = sigmoid_loss_memory(sigmoid_batch, chunk_size=256)
    print(
        f"  full matrix {sigmoid['full_bytes'] / 2**20:.0f} MiB, chunks of 256 captions "
        f"{sigmoid['chunked_bytes'] / 2**20:.0f} MiB: {sigmoid['ratio']:.3f}x; same loss: {sigmoid['same_loss']}"
    )


if __name__ == "__main__":
    main()
