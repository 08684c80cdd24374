"""How the exercises at the end of every chapter are checked, without showing their answers.

A chapter's exercise cell holds the reader's answer and one call, e.g.

    answer_1 = None  # the number of image tokens at 448 pixels
    check("1.1", answer_1)

The expected value is not on the page: it is computed by `pgemma.exercises.chNN`, the module of
chapter NN, which registers each exercise under its key ("1.1" is chapter 1, exercise 1). Three
kinds of exercise:

- `ValueExercise`: the answer is a value (a number, a string, a tensor). When the value depends on
  objects the chapter built (a trained model, a batch), the cell passes them by name:
  `check("6.4", answer_4, calls=calls)`, and the expected value is computed from them.
- `CodingExercise`: the answer is a function the reader wrote; it is called on inputs the reader
  has not seen and compared with the package's own implementation.
- `ExperimentExercise`: the reader changes an experiment, writes down a prediction, runs it, and
  the prediction is compared with what the run measured (passed by name, like a value's context).

Every exercise also carries a solution (shown in the book's appendix) and a plausible wrong answer,
so the test suite proves that each checker accepts the one and rejects the other.

`check` prints "correct" or "not yet"; in strict mode (`PGEMMA_EXERCISES=strict`, set by the test
suite) a wrong answer raises `WrongAnswer` instead, so a checker that no longer accepts its own
solution fails the build.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

STRICT_VARIABLE = "PGEMMA_EXERCISES"


class WrongAnswer(AssertionError):
    """Raised in strict mode when an answer is checked and found wrong."""


@dataclass(frozen=True)
class ValueExercise:
    """An answer that is a value, compared with `expected(**context)`.

    Args:
        key: "chapter.number", e.g. "7.2a".
        expected: computes the right answer from the objects the chapter's cell passes by name.
        wrong: a plausible mistake (same arguments), which the checker must reject.
        example_context: builds those objects for the test suite (empty when none are needed).
        tolerance: absolute tolerance for floats and tensors.
    """

    key: str
    expected: Callable[..., Any]
    wrong: Callable[..., Any]
    example_context: Callable[[], dict] = dict
    tolerance: float = 1e-6

    def solution(self, **context) -> Any:
        return self.expected(**context)

    def mistake(self, answer, **context) -> str | None:
        """None when `answer` is right, else what is wrong (never the expected value)."""
        return None if same_value(answer, self.expected(**context), self.tolerance) else "not yet, try again"


@dataclass(frozen=True)
class CodingExercise:
    """An answer that is a function, compared with the package's `reference` on unseen inputs.

    Args:
        key: "chapter.number".
        reference: the package's implementation the reader's function must agree with.
        inputs: yields argument tuples the reader has not seen (seeded, so the check is repeatable).
        solution_function: a reader's solution, shown in the appendix.
        wrong_function: a plausible mistake, which the checker must reject.
        tolerance: absolute tolerance on the outputs.
    """

    key: str
    reference: Callable[..., Any]
    inputs: Callable[[], Iterable[tuple]]
    solution_function: Callable[..., Any]
    wrong_function: Callable[..., Any]
    tolerance: float = 1e-5

    def example_context(self) -> dict:
        """A coding exercise needs no objects from the chapter: its inputs come from `inputs`."""
        return {}

    def solution(self) -> Callable[..., Any]:
        return self.solution_function

    def wrong(self) -> Callable[..., Any]:
        return self.wrong_function

    def is_stub(self, function: Callable[..., Any]) -> bool:
        """Whether `function` is still the chapter's blank: a function that returns None."""
        if not callable(function):
            return False
        try:
            return function(*next(iter(self.inputs()))) is None
        except Exception:  # the reader's code: `mistake` reports the error
            return False

    def mistake(self, function: Callable[..., Any]) -> str | None:
        """None when `function` agrees with the reference on every unseen input, else the first
        disagreement, described by shapes and not by values."""
        if not callable(function):
            return f"expected a function, got {type(function).__name__}"
        for arguments in self.inputs():
            try:
                got = function(*arguments)
            except Exception as error:  # the reader's code: report its error, don't hide it
                return f"your function raised {type(error).__name__}: {error} (inputs: {describe(arguments)})"
            wanted = self.reference(*arguments)
            if same_value(got, wanted, self.tolerance):
                continue
            if isinstance(got, torch.Tensor) and isinstance(wanted, torch.Tensor) and got.shape != wanted.shape:
                return f"for inputs {describe(arguments)} your function gives {describe((got,))}, expected {describe((wanted,))}"
            return f"for inputs {describe(arguments)} your function gives {describe((got,))} with different values"
        return None


@dataclass(frozen=True)
class ExperimentExercise:
    """A prediction about an experiment the reader changes and runs.

    Args:
        key: "chapter.number".
        outcome: what the run measured, turned into the answer a right prediction gives
            (e.g. "larger" or "smaller"); its arguments are the measurements the cell passes.
        choices: the predictions the reader may write.
        example_context: measurements for the test suite (e.g. those of the chapter's own run).
    """

    key: str
    outcome: Callable[..., Any]
    choices: tuple[str, ...]
    example_context: Callable[[], dict] = dict

    def solution(self, **context) -> str:
        return self.outcome(**context)

    def wrong(self, **context) -> str:
        right = self.outcome(**context)
        return next(choice for choice in self.choices if choice != right)

    def mistake(self, prediction, **context) -> str | None:
        if prediction not in self.choices:
            return f"write one of {', '.join(map(repr, self.choices))}"
        if prediction != self.outcome(**context):
            return "the run says otherwise: look at what it measured and explain why"
        return None


Exercise = ValueExercise | CodingExercise | ExperimentExercise
EXERCISES: dict[str, Exercise] = {}


def register(*exercises: Exercise) -> None:
    """Add a chapter's exercises to the registry (called once by each `chNN` module)."""
    for exercise in exercises:
        if exercise.key in EXERCISES:
            raise ValueError(f"exercise {exercise.key} is registered twice")
        EXERCISES[exercise.key] = exercise


def chapter_module(key: str) -> str:
    """The module that registers exercise `key`: "7.2a" -> "pgemma.exercises.ch07"."""
    chapter = key.split(".")[0]
    if not chapter.isdigit():
        raise KeyError(f"exercise key {key!r} does not start with a chapter number, e.g. '7.2'")
    return f"pgemma.exercises.ch{int(chapter):02d}"


def find(key: str) -> Exercise:
    """The exercise registered under `key`, importing its chapter's module when needed."""
    if key not in EXERCISES:
        try:
            importlib.import_module(chapter_module(key))
        except ModuleNotFoundError as error:
            raise KeyError(f"no exercises for chapter of {key!r} ({chapter_module(key)} is missing)") from error
    if key not in EXERCISES:
        raise KeyError(f"no exercise {key!r} in {chapter_module(key)}")
    return EXERCISES[key]


def strict_mode() -> bool:
    return os.environ.get(STRICT_VARIABLE, "").lower() == "strict"


def check(key: str, answer, **context) -> bool:
    """Check the reader's `answer` to exercise `key` and print the verdict.

    An unanswered exercise (`answer is None`, or a coding exercise's function that still returns
    None) is reported as such, so the chapter runs top to bottom, in strict mode too, before the
    reader has filled anything in. The expected value is never printed.
    Returns whether the answer is right; in strict mode a wrong answer raises `WrongAnswer`.
    """
    exercise = find(key)
    if answer is None or (isinstance(exercise, CodingExercise) and exercise.is_stub(answer)):
        print(f"exercise {key}: not answered yet (replace None with your answer and run the cell again)")
        return False
    problem = exercise.mistake(answer, **context)
    if problem is None:
        print(f"exercise {key}: correct")
        return True
    if strict_mode():
        raise WrongAnswer(f"exercise {key}: {problem}")
    print(f"exercise {key}: {problem}")
    return False


def same_value(answer, expected, tolerance: float) -> bool:
    """Whether `answer` equals `expected`: tensors by shape and values, floats within `tolerance`,
    sequences element by element, everything else with ==."""
    if isinstance(expected, torch.Tensor):
        return (
            isinstance(answer, torch.Tensor)
            and answer.shape == expected.shape
            and bool(torch.allclose(answer.double(), expected.double(), atol=tolerance, rtol=0, equal_nan=True))
        )
    if isinstance(expected, float):
        return (
            isinstance(answer, (int, float))
            and not isinstance(answer, bool)
            and math.isclose(answer, expected, abs_tol=tolerance)
        )
    if isinstance(expected, (tuple, list)):
        return (
            isinstance(answer, (tuple, list))
            and len(answer) == len(expected)
            and all(same_value(a, e, tolerance) for a, e in zip(answer, expected))
        )
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        answer = answer.item()  # a one-element tensor is a fine answer to "how many"
    if isinstance(answer, bool) or isinstance(expected, bool):
        return answer is expected  # True is not the answer 1
    return answer == expected


def describe(values: tuple) -> str:
    """Shapes of tensors and types of everything else: what a message may say about an input."""
    return ", ".join(
        f"tensor{tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__ for value in values
    )
