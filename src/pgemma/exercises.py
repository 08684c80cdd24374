"""Answer checks for the exercises that end each chapter of the book."""

import math

import torch


def check(answer, expected, name: str = "answer", tolerance: float = 1e-6) -> None:
    """Print whether `answer` equals `expected` (numbers and tensors within `tolerance`).

    An unanswered exercise (`answer is None`) is reported as such, so a notebook runs top to
    bottom before the reader has filled anything in. The expected value is never printed.
    """
    if answer is None:
        print(f"{name}: not answered yet (replace None with your answer and run the cell again)")
        return
    if isinstance(expected, torch.Tensor):
        correct = (
            isinstance(answer, torch.Tensor)
            and answer.shape == expected.shape
            and torch.allclose(answer.float(), expected.float(), atol=tolerance, rtol=0)
        )
    elif isinstance(expected, float):
        correct = isinstance(answer, (int, float)) and math.isclose(answer, expected, abs_tol=tolerance)
    else:
        correct = answer == expected
    print(f"{name}: {'correct' if correct else 'not yet, try again'}")
