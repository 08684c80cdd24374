"""The three dependency lists agree: pyproject.toml (bounds), requirements.txt and environment.yml (pins)."""

import re

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

from tools.book import ROOT
from tools.oldest import constraints, lower_bound


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def direct_dependencies() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    return {normalized(Requirement(line).name): Requirement(line) for line in listed}


def requirements_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[normalized(name)] = version
    return pins


def environment_pins() -> dict[str, str]:
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    pins = {}
    for line in pip_section:
        if "==" in line:
            name, version = line.split("==")
            pins[normalized(name)] = version
    return pins


def test_requirements_pin_every_direct_dependency_within_its_bounds():
    pins = requirements_pins()
    for name, requirement in direct_dependencies().items():
        assert name in pins, f"requirements.txt does not pin {name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.txt pins {name}=={pins[name]}, outside pyproject's {requirement.specifier}"
        )
    assert pins["torch"] == "2.13.0", "keep torch pinned to the CPU build 2.13.0"


def test_environment_yml_lists_the_same_packages_with_the_same_pins():
    environment, pins = environment_pins(), requirements_pins()
    assert set(environment) == set(direct_dependencies()), (
        f"environment.yml and pyproject.toml list different packages: {set(environment) ^ set(direct_dependencies())}"
    )
    drifted = {name: (version, pins.get(name)) for name, version in environment.items() if pins.get(name) != version}
    assert not drifted, f"environment.yml pins differ from requirements.txt (env, req): {drifted}"


def test_pyproject_has_lower_bounds_only():
    for name, requirement in direct_dependencies().items():
        operators = {spec.operator for spec in requirement.specifier}
        if name == "jupyter-book":  # 2.x is a different, network-bound builder
            continue
        assert operators <= {">="}, f"{name}: runtime and extras take lower bounds only, got {requirement.specifier}"


def test_the_oldest_constraints_are_pyprojects_lower_bounds():
    assert (ROOT / "constraints-oldest.txt").read_text() == constraints(), "run python -m tools.oldest"
    pins = dict(line.split("==") for line in constraints().splitlines() if not line.startswith("#"))
    assert pins["transformers"] == lower_bound(direct_dependencies()["transformers"])
    assert "jupyter-book" not in pins and pins["torch"] == "2.13.0"


def test_a_dependency_without_a_lower_bound_is_refused():
    with pytest.raises(ValueError, match="needs exactly one '>=' lower bound"):
        lower_bound(Requirement("numpy<3"))
