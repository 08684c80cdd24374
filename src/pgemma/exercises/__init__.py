"""The chapters' exercises: `check(key, answer)` and, in `chNN` modules, each chapter's checkers."""

from pgemma.exercises.checking import (
    EXERCISES,
    CodingExercise,
    ExperimentExercise,
    ValueExercise,
    WrongAnswer,
    check,
    find,
    register,
)

__all__ = [
    "EXERCISES",
    "CodingExercise",
    "ExperimentExercise",
    "ValueExercise",
    "WrongAnswer",
    "check",
    "find",
    "register",
]
