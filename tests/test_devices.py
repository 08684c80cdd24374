"""Tests for pgemma.devices: which devices pgemma computes on, and the memory left on one."""

import pytest
import torch

from pgemma.devices import available_bytes, compute_device


@pytest.mark.parametrize("name", ["cpu", "cpu:0", torch.device("cpu")])
def test_the_cpu_is_always_a_compute_device(name):
    assert compute_device(name) == torch.device(name)


@pytest.mark.parametrize(
    "name, message",
    [
        ("meta", "device 'meta': pgemma computes on cpu, cuda, mps, not on meta (it holds shapes, not numbers)"),
        ("nonsense", "device 'nonsense' is not a torch device (try cpu or cuda)"),
        ("", "device '' is not a torch device (try cpu or cuda)"),
        ("cpu:1", "device 'cpu:1': there is one cpu device, index 0"),
        ("xla", "device 'xla': pgemma computes on cpu, cuda, mps, not on xla"),
    ],
)
def test_devices_pgemma_cannot_compute_on_are_refused(name, message):
    with pytest.raises(ValueError) as error:
        compute_device(name)
    assert str(error.value) == message


def test_an_accelerator_this_machine_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available on this machine; use cpu"):
        compute_device("cuda")
    with pytest.raises(ValueError, match="device 'cuda:1': CUDA is not available"):
        compute_device("cuda:1")
    with pytest.raises(ValueError, match=r"device 'mps': MPS \(an Apple GPU\) is not available"):
        compute_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device 'cuda:1': this machine has 1 CUDA device\(s\)"):
        compute_device("cuda:1")
    assert compute_device("cuda:0") == torch.device("cuda:0")


def test_available_bytes_of_the_cpu():
    available = available_bytes("cpu")
    assert isinstance(available, int) and 0 < available < 2**60
    assert available_bytes("meta") is None
