"""Devices pgemma computes on, and how much memory is left on one.

Book chapter: "The KV-cache" (whose memory grows with the answer's length).

A name such as ``"cuda"`` is a valid ``torch.device`` on every machine; whether it can compute is
another matter: CUDA needs a GPU and a PyTorch built for it, MPS an Apple GPU, and ``meta`` holds
shapes without numbers. ``compute_device`` refuses those at once, before a model is built on them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# The device types pgemma computes on: the CPU always, the others when PyTorch sees one.
DEVICE_TYPES = ("cpu", "cuda", "mps")


def compute_device(device: torch.device | str) -> torch.device:
    """The ``torch.device`` named by ``device``, if pgemma can compute on it on this machine.

    Raises ValueError naming the device and why it cannot be used.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {str(device)!r} is not a torch device (try cpu or cuda)") from None
    if parsed.type not in DEVICE_TYPES:
        raise ValueError(
            f"device {str(device)!r}: pgemma computes on {', '.join(DEVICE_TYPES)}, not on {parsed.type}"
            + (" (it holds shapes, not numbers)" if parsed.type == "meta" else "")
        )
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: CUDA is not available on this machine; use cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r}: MPS (an Apple GPU) is not available on this machine; use cpu")
    if parsed.type in ("cpu", "mps") and parsed.index not in (None, 0):
        raise ValueError(f"device {str(device)!r}: there is one {parsed.type} device, index 0")
    return parsed


def available_bytes(device: torch.device | str) -> int | None:
    """Bytes that can still be allocated on ``device``, or None if it cannot be told.

    CPU: the kernel's estimate of memory available without swapping (``MemAvailable`` in
    /proc/meminfo on Linux, which counts reclaimable caches, else the free pages), lowered to what
    is left under the container's limit (cgroup v2) if there is one. CUDA: the GPU's free memory.
    MPS: the recommended limit minus what is allocated.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    if device.type == "mps":
        return torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    if device.type != "cpu":
        return None
    meminfo = _read_number("/proc/meminfo", "MemAvailable:")
    if meminfo is not None:
        available = meminfo * 1024  # the file counts kB
    elif hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    else:
        return None
    limit, used = _read_number("/sys/fs/cgroup/memory.max"), _read_number("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:  # memory.max is "max" when there is no limit
        available = min(available, limit - used)
    return available


def _read_number(path: str, label: str = "") -> int | None:
    """The number after ``label`` on the first line that starts with it, or None (no file, no number)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(label):
            words = line[len(label) :].split()
            return int(words[0]) if words and words[0].isdigit() else None
    return None
