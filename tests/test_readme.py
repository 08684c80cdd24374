"""Every name the READMEs import from pgemma exists (their examples load checkpoints that are not here)."""

import importlib
import re

import pytest

from tools.book import ROOT

READMES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]


def pgemma_imports() -> list[tuple[str, str, str]]:
    """(readme, module, name) for every ``from pgemma... import a, b`` and ``pgemma.name(`` of the READMEs."""
    found = []
    for readme in READMES:
        text = readme.read_text()
        for module, names in re.findall(r"^from (pgemma[\w.]*) import ([\w, ]+)$", text, re.M):
            found += [(readme.name, module, name.strip()) for name in names.split(",")]
        found += [(readme.name, "pgemma", name) for name in sorted(set(re.findall(r"\bpgemma\.(\w+)\(", text)))]
    return found


def test_the_readmes_import_from_pgemma():
    assert len(pgemma_imports()) >= 3  # the faster-on-a-CPU example at least


@pytest.mark.parametrize("readme, module, name", pgemma_imports())
def test_imported_name_exists(readme, module, name):
    assert hasattr(importlib.import_module(module), name), f"{readme}: {module} has no {name}"
