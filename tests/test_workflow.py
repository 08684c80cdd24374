"""The publishing workflow runs the README's commands (it cannot run here, so it is checked as text)."""

import re

import yaml

from tools.book import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"


def readme_commands() -> list[str]:
    """The commands in the README's first bash block (the "Two commands"), comments stripped."""
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md has no ```bash block with the set-up commands"
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [command for command in commands if command]


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def run_lines(job: dict) -> list[str]:
    return [line.strip() for step in steps(job) for line in step.get("run", "").splitlines() if line.strip()]


def uses(job: dict) -> list[str]:
    return [step["uses"].split("@")[0] for step in steps(job) if "uses" in step]


def test_readme_lists_the_two_commands():
    assert readme_commands() == ["make book", "make test"]


def test_runs_on_pushes_to_main():
    triggers = workflow().get("on", workflow().get(True))  # YAML 1.1 reads a bare `on` as true
    assert "main" in triggers["push"]["branches"]


def test_build_job_runs_the_readme_commands_then_uploads_the_site():
    build = workflow()["jobs"]["build"]
    lines = run_lines(build)
    for command in readme_commands():
        assert command in lines, f"the workflow does not run the README's `{command}`"
    order = [step.get("run", step.get("uses", "")).strip() for step in steps(build)]
    upload = next(i for i, item in enumerate(order) if item.startswith("actions/upload-pages-artifact"))
    assert all(order.index(command) < upload for command in readme_commands()), "upload after testing and building"
    artifact = next(step for step in steps(build) if step.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert artifact["with"]["path"] == "_build/html"
    assert "actions/checkout" in uses(build)


def test_deploy_job_publishes_to_github_pages():
    document = workflow()
    deploy = document["jobs"]["deploy"]
    assert deploy["needs"] in ("build", ["build"])
    assert "actions/deploy-pages" in uses(deploy)
    assert deploy["environment"]["name"] == "github-pages"
    assert document["permissions"]["pages"] == "write" and document["permissions"]["id-token"] == "write"


def test_ci_entry_point_runs_exactly_the_readme_test_command():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in readme_commands() and "make test" in lines
    assert [line for line in lines if line.startswith("make ")] == ["make test"]
