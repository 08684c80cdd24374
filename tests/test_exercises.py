"""The exercises: every checker accepts its solution and rejects a mistake, no chapter cell shows an
expected value, every chapter has a coding exercise and an experiment, and the appendix shows every
solution."""

import ast
import importlib
import json
import re
from pathlib import Path

import pytest
import torch

import pgemma.exercises
from pgemma.exercises import (
    EXERCISES,
    CodingExercise,
    ExperimentExercise,
    ValueExercise,
    WrongAnswer,
    check,
    find,
)
from pgemma.exercises.checking import STRICT_VARIABLE, chapter_module, same_value
from tools.book import ROOT, chapter_notebooks

PACKAGE = Path(pgemma.exercises.__file__).parent
CHAPTER_MODULES = sorted(path.stem for path in PACKAGE.glob("ch[0-9][0-9].py"))
for module in CHAPTER_MODULES:
    importlib.import_module(f"pgemma.exercises.{module}")
KEYS = sorted(EXERCISES)
NOTEBOOKS = {int(path.name[:2]): path for path in chapter_notebooks() if path.name[:2].isdigit()}
APPENDIX = ROOT / "book" / "solutions.md"


@pytest.fixture
def strict(monkeypatch):
    monkeypatch.setenv(STRICT_VARIABLE, "strict")


@pytest.fixture
def lenient(monkeypatch):
    monkeypatch.setenv(STRICT_VARIABLE, "")


@pytest.mark.parametrize("key", KEYS)
def test_checker_accepts_the_solution_and_rejects_a_mistake(key, strict, capsys):
    exercise = EXERCISES[key]
    context = exercise.example_context()
    assert check(key, exercise.solution(**context), **context) is True
    with pytest.raises(WrongAnswer, match=f"exercise {re.escape(key)}"):
        check(key, exercise.wrong(**context), **context)


def test_without_strict_mode_a_wrong_answer_is_printed_not_raised(lenient, capsys):
    assert check("1.1", None) is False
    assert check("1.1", 1) is False
    assert check("1.1", find("1.1").solution()) is True
    assert capsys.readouterr().out.splitlines() == [
        "exercise 1.1: not answered yet (replace None with your answer and run the cell again)",
        "exercise 1.1: not yet, try again",
        "exercise 1.1: correct",
    ]


def test_messages_never_print_the_expected_value(lenient, capsys):
    for key in KEYS:
        exercise = EXERCISES[key]
        if isinstance(exercise, ValueExercise):
            context = exercise.example_context()
            check(key, exercise.wrong(**context), **context)
            expected = exercise.expected(**context)
            if isinstance(expected, (int, float, str)) and not isinstance(expected, bool) and len(str(expected)) > 2:
                assert str(expected) not in capsys.readouterr().out, key


def test_a_coding_checker_describes_shapes_and_errors_not_values(lenient, capsys):
    def raises(images, patch_size):
        raise RuntimeError("not written yet")

    assert check("1.3", lambda images, patch_size: images) is False
    assert check("1.3", raises) is False
    assert check("1.3", 42) is False
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(
        "exercise 1.3: for inputs tensor(2, 3, 28, 28), int your function gives tensor(2, 3, 28, 28)"
    )
    assert "expected tensor(2, 4, 588)" in out[0]
    assert "raised RuntimeError: not written yet" in out[1]
    assert out[2] == "exercise 1.3: expected a function, got int"


def test_a_function_that_still_returns_none_is_not_answered_yet(strict, capsys):
    def stub(images, patch_size):
        return None

    assert check("1.3", stub) is False
    assert capsys.readouterr().out.startswith("exercise 1.3: not answered yet")


def test_unknown_keys_are_named():
    with pytest.raises(KeyError, match="no exercise '1.99'"):
        find("1.99")
    with pytest.raises(KeyError, match="does not start with a chapter number"):
        find("one")
    assert chapter_module("7.2a") == "pgemma.exercises.ch07"


@pytest.mark.parametrize(
    "answer, expected, same",
    [
        (3, 3, True),
        (3.0, 3, True),
        (True, 1, False),
        (torch.tensor(5), 5, True),
        (0.1 + 0.2, 0.3, True),
        (0.31, 0.3, False),
        ("<loc0300>", "<loc0300>", True),
        ([1, 2], [1, 2], True),
        ([1, 2], [1, 3], False),
        (torch.ones(2, 3), torch.ones(2, 3), True),
        (torch.ones(3, 2), torch.ones(2, 3), False),
        (torch.ones(6).tolist(), torch.ones(6), False),
    ],
)
def test_same_value(answer, expected, same):
    assert same_value(answer, expected, 1e-6) is same


def exercise_cells(notebook: Path) -> list[str]:
    """The sources of the code cells that call `check`."""
    cells = json.loads(notebook.read_text())["cells"]
    return [
        "".join(cell["source"]) for cell in cells if cell["cell_type"] == "code" and "check(" in "".join(cell["source"])
    ]


def checked_keys(source: str) -> list[str]:
    tree = ast.parse(source)
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "check"
    ]


@pytest.mark.parametrize("chapter", sorted(NOTEBOOKS))
def test_every_exercise_of_a_chapter_is_checked_in_that_chapter(chapter):
    in_notebook = [key for source in exercise_cells(NOTEBOOKS[chapter]) for key in checked_keys(source)]
    registered = [key for key in KEYS if key.split(".")[0] == str(chapter)]
    assert in_notebook, f"chapter {chapter} checks no exercise"
    assert sorted(in_notebook) == registered


@pytest.mark.parametrize("chapter", sorted(NOTEBOOKS))
def test_exercise_cells_do_not_show_the_expected_value(chapter):
    """An exercise cell holds only the reader's blanks (`x = None`, a function to write), comments,
    and `check(key, answer, name=object, ...)` calls whose arguments are names: nothing computed."""
    for source in exercise_cells(NOTEBOOKS[chapter]):
        for statement in ast.parse(source).body:
            if isinstance(statement, ast.FunctionDef):
                continue
            if isinstance(statement, ast.Assign):
                assert all(
                    isinstance(node, ast.Constant) and node.value is None for node in ast.walk(statement.value)
                ) or (
                    isinstance(statement.value, ast.Tuple)
                    and all(isinstance(e, ast.Constant) and e.value is None for e in statement.value.elts)
                ), f"chapter {chapter}: {ast.unparse(statement)} computes a value in an exercise cell"
                continue
            assert isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call), ast.unparse(statement)
            call = statement.value
            assert getattr(call.func, "id", None) == "check", ast.unparse(statement)
            key, *answers = call.args
            assert isinstance(key, ast.Constant) and isinstance(key.value, str)
            arguments = answers + [keyword.value for keyword in call.keywords]
            for argument in arguments:
                assert isinstance(argument, ast.Name), (
                    f"chapter {chapter}: {ast.unparse(argument)} in {ast.unparse(call)}"
                )


@pytest.mark.parametrize("chapter", sorted(NOTEBOOKS))
def test_every_chapter_has_a_coding_exercise_and_an_experiment(chapter):
    kinds = {type(EXERCISES[key]) for key in KEYS if key.split(".")[0] == str(chapter)}
    assert CodingExercise in kinds, f"chapter {chapter} has no coding exercise"
    assert ExperimentExercise in kinds, f"chapter {chapter} has no experiment exercise"


def solution_functions(exercise) -> list:
    if isinstance(exercise, ValueExercise):
        return [exercise.expected]
    if isinstance(exercise, CodingExercise):
        return [exercise.solution_function]
    return [exercise.outcome]


@pytest.mark.parametrize("key", KEYS)
def test_the_appendix_shows_every_solution(key):
    appendix = APPENDIX.read_text()
    for function in solution_functions(EXERCISES[key]):
        assert function.__name__ != "<lambda>", f"{key}: name the solution so the appendix can show it"
        module = function.__module__.rsplit(".", 1)[-1]
        shown = f"../src/pgemma/exercises/{module}.py\n:pyobject: {function.__name__}\n"
        assert shown in appendix, f"{key}: book/solutions.md does not show {module}.{function.__name__}"
