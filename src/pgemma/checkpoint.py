"""Loading and saving Hugging Face PaliGemma checkpoints: ``config.json`` + safetensors, nothing else.

PaliGemma 1 and 2 checkpoints both load: ``config.json``'s ``text_config.model_type`` (``gemma`` or
``gemma2``) picks the decoder.

Book chapter: "Assembling PaliGemma" (its section "the real model").

Our parameter names are the hub's, so loading is a rename table (for the other layouts
transformers has written over the years), a check that every tensor is there with the right shape,
and an assignment. Weights come only from safetensors files: a pickle (``pytorch_model.bin``, ``.pt``)
can run arbitrary code when loaded, so it is refused.

The model is built on the ``meta`` device (shapes, no memory), then each tensor is read from the
memory-mapped file, cast, moved and assigned in turn: the weights exist once, never twice.

Weights are floating-point numbers: a tensor stored as integers, booleans, complex numbers, or in an
8-bit or smaller float format (quantized checkpoints, whose scales pgemma does not apply) is refused,
not cast. float64 is read only with an explicit ``dtype=``: pgemma computes in float32 at most.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from pgemma.config import CONFIG_NAME, load_config
from pgemma.devices import compute_device
from pgemma.files import atomic_write
from pgemma.paligemma import PaliGemmaForConditionalGeneration

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# The safetensors dtypes a weight may be stored in; the first three are also dtypes pgemma computes in.
WEIGHT_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# transformers' own names since version 5, in memory: (their prefix, ours). PEFT's adapter files use them.
TRANSFORMERS_RENAMES = (
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)
# (prefix in a file, prefix in pgemma); the first match wins.
KEY_RENAMES = (
    ("vision_tower.vision_model.", "vision_tower.vision_model."),  # hub, transformers <= 4.51
    ("model.vision_tower.vision_model.", "vision_tower.vision_model."),
    ("vision_tower.", "vision_tower.vision_model."),  # transformers >= 5.6 saving a model built from a config
    ("multi_modal_projector.", "multi_modal_projector."),
    ("language_model.model.", "language_model.model."),  # hub
    ("language_model.lm_head.", "language_model.lm_head."),
    *TRANSFORMERS_RENAMES,  # after the longer "model.vision_tower.vision_model." above
)
EMBED_KEY = "language_model.model.embed_tokens.weight"
HEAD_KEY = "language_model.lm_head.weight"  # tied to the embedding; usually absent from files


def pgemma_key(key: str) -> str | None:
    """Our name for a checkpoint key, or None if no layout we know has it."""
    for old, new in KEY_RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def load_model(
    path: str | Path,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    use_sdpa: bool = False,
) -> PaliGemmaForConditionalGeneration:
    """Build a model from a checkpoint directory (``config.json`` + safetensors) in eval mode.

    Args:
        path: a directory with ``config.json`` and ``model.safetensors`` or a sharded
            ``model.safetensors.index.json``, in any key layout transformers has written.
        dtype: float32, bfloat16 or float16; None keeps the checkpoint's (its embedding's) dtype,
            which must then be one of those three.
        device: where the weights go: cpu, or cuda or mps if this machine has one (``devices.compute_device``).
        use_sdpa: use PyTorch's fused attention kernel (see ``attention.attention``); the layers
            of a PaliGemma 2 decoder that soft-cap their attention scores keep the explicit path.
    Raises:
        ValueError: naming the file, key and problem, for a missing or invalid ``config.json``
            (every number finite and in range), a pickle file, missing, unexpected or misshapen
            tensors, and weights stored as anything but floating point (F32, BF16, F16, or F64,
            which is cast): integer, bool and 8-bit float tensors are refused, never cast.
    Note: on the CPU, a tensor that needs no cast stays memory-mapped from its file (the operating
    system reads it in when first used), so do not overwrite the files while the model is in use.
    """
    path = Path(path)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise ValueError(
                f"{path}: pgemma loads safetensors only; this looks like a pickle, which can run "
                "code when loaded. Convert it to model.safetensors with trusted tools first"
            )
        raise ValueError(f"{path}: expected a checkpoint directory (config.json + model.safetensors)")
    if dtype is not None and dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    device = compute_device(device)
    config = load_config(path)
    tensors = _index_tensors(path)  # our name -> (file, key in the file)
    with ExitStack() as stack:
        handles = {file: stack.enter_context(_open(file)) for file in {file for file, _ in tensors.values()}}
        try:
            with torch.device("meta"), _without_init():
                model = PaliGemmaForConditionalGeneration(config, use_sdpa)
        except (RuntimeError, TypeError, OverflowError) as error:  # sizes whose products overflow int64
            reason = str(error).splitlines()[0]
            raise ValueError(f"{path / CONFIG_NAME}: PyTorch cannot build a model of these sizes ({reason})") from None
        expected = {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}
        _check_keys(expected, tensors, handles, path)
        if dtype is None:
            file, key = tensors[EMBED_KEY]
            dtype = _stored_dtype(handles[file], key, file)
        state = {}
        for name, (file, key) in tensors.items():
            state[name] = _read(handles[file], key, file).to(device=device, dtype=dtype)  # one tensor at a time
    head = state.pop(HEAD_KEY, None)
    if head is not None and not torch.equal(head, state[EMBED_KEY]):
        raise ValueError(
            f"{path}: lm_head.weight differs from embed_tokens.weight; PaliGemma ties them and "
            "pgemma does not support an untied output head"
        )
    state[HEAD_KEY] = state[EMBED_KEY]
    model.load_state_dict(state, strict=True, assign=True)  # every key was checked above
    model.language_model.tie_weights()  # assign replaced the Parameter objects; share one again
    return model.eval()


def save_pretrained(model: PaliGemmaForConditionalGeneration, path: str | Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` in the hub layout (transformers loads it).

    The tied output head is not written: like the hub files, the embedding stands for both. Each
    file is written whole (``files.atomic_write``), with the permissions the user's umask gives.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {
        name: p.detach().cpu().contiguous()
        for name, p in model.named_parameters(remove_duplicate=False)
        if name != HEAD_KEY
    }
    config = model.config.to_hf_dict()
    config["dtype"] = str(state[EMBED_KEY].dtype).removeprefix("torch.")
    with atomic_write(path / CONFIG_NAME) as temporary:
        temporary.write_text(json.dumps(config, indent=2) + "\n")
    with atomic_write(path / WEIGHTS_NAME) as temporary:
        save_file(state, temporary, metadata={"format": "pt"})  # transformers needs this metadata


def load_pretrained(
    path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str = "cpu"
) -> tuple[PaliGemmaForConditionalGeneration, Any]:
    """The model and its processor (tokenizer + image preprocessing) from one checkpoint directory.

    Accepts what ``load_model`` and ``processor.load_processor`` accept (``tokenizer.json`` or
    ``tokenizer.model`` beside ``config.json``), and raises what they raise.
    """
    from pgemma.processor import load_processor  # imported here: the engine never depends on it

    return load_model(path, dtype=dtype, device=device), load_processor(path)


def _index_tensors(path: Path) -> dict[str, tuple[Path, str]]:
    """Map each of our parameter names to the file and key holding it."""
    index_path = path / INDEX_NAME
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{index_path}: not a valid index, expected a 'weight_map' object ({error})") from error
        files = {file: path / file for file in set(weight_map.values())}
        for file in files.values():
            if not file.is_file():
                raise ValueError(f"{index_path} lists {file.name}, which is missing")
        keys = {key: files[file] for key, file in weight_map.items()}
    elif (path / WEIGHTS_NAME).is_file():
        with _open(path / WEIGHTS_NAME) as handle:
            keys = {key: path / WEIGHTS_NAME for key in handle.keys()}
    else:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(
                f"{path}: found {', '.join(pickles)} but no {WEIGHTS_NAME}; pgemma loads "
                "safetensors only (pickles can run code when loaded)"
            )
        raise ValueError(f"{path}: no {WEIGHTS_NAME} or {INDEX_NAME}")
    tensors: dict[str, tuple[Path, str]] = {}
    unknown = []
    for key, file in keys.items():
        name = pgemma_key(key)
        if name is None:
            unknown.append(key)
        elif name in tensors:
            raise ValueError(f"{path}: {tensors[name][1]!r} and {key!r} are the same tensor in two layouts")
        else:
            tensors[name] = (file, key)
    if unknown:
        raise ValueError(f"{path}: unexpected keys (no known PaliGemma layout has them): {_listing(unknown)}")
    return tensors


def _check_keys(
    expected: dict[str, tuple[int, ...]],
    tensors: dict[str, tuple[Path, str]],
    handles: dict[Path, Any],
    path: Path,
) -> None:
    """Name every missing, unexpected, mis-shaped and non-floating-point tensor, all in one error."""
    problems = []
    missing = [name for name in expected if name not in tensors and name != HEAD_KEY]  # the head is optional
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    unexpected = [key for name, (_, key) in tensors.items() if name not in expected]
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    not_float: dict[tuple[str, str], list[str]] = {}  # (file, dtype) -> keys
    for name, (file, key) in tensors.items():
        stored = handles[file].get_slice(key)
        shape = tuple(stored.get_shape())
        if name in expected and shape != expected[name]:
            problems.append(f"{key} in {file.name} has shape {shape}, the config needs {expected[name]}")
        if stored.get_dtype() not in WEIGHT_DTYPES:
            not_float.setdefault((file.name, stored.get_dtype()), []).append(key)
    for (file_name, stored_dtype), keys in not_float.items():
        problems.append(
            f"{_listing(keys)} in {file_name} stored as {stored_dtype}, not as floating-point weights "
            f"({', '.join(WEIGHT_DTYPES)}); pgemma does not cast them"
        )
    if problems:
        raise ValueError(f"{path}: cannot load this checkpoint:\n  " + "\n  ".join(problems))


@contextmanager
def _without_init() -> Iterator[None]:
    """Build modules without drawing their random initial weights: the checkpoint replaces them all.

    On the meta device drawing computes nothing, but ``nn.Embedding``'s ``normal_`` has no meta
    kernel: the first call imports PyTorch's Python reference kernels, seconds and tens of MB; once
    they are imported, ``nn.Linear``'s ``uniform_`` runs through them too (about 1 ms per layer).
    """
    initializers = ("normal_", "uniform_", "kaiming_uniform_")  # what Embedding, Linear and Conv2d draw
    originals = {name: getattr(nn.init, name) for name in initializers}
    for name in initializers:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(nn.init, name, function)


def _open(file: Path):
    try:
        return safe_open(file, framework="pt", device="cpu")
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{file}: not a readable safetensors file ({error})") from error


def _read(handle: Any, key: str, file: Path) -> torch.Tensor:
    try:
        return handle.get_tensor(key)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{file}: cannot read {key!r}, the file may be truncated ({error})") from error


def _stored_dtype(handle: Any, key: str, file: Path) -> torch.dtype:
    """The dtype a float weight is stored in (``_check_keys`` refused the others), if pgemma computes in it."""
    stored = handle.get_slice(key).get_dtype()
    if WEIGHT_DTYPES[stored] not in COMPUTE_DTYPES:
        raise ValueError(f"{file}: {key} is stored as {stored}; pass dtype=torch.float32 (or bfloat16, float16)")
    return WEIGHT_DTYPES[stored]


def _listing(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
