"""Errors raised by the evaluator for invalid input; each message is one line naming the file."""

from __future__ import annotations


class EvaluationError(ValueError):
    """Invalid evaluation input (unreadable file, geometry mismatch, unknown labels, ...)."""

    exit_code = 2


class OutputPathError(EvaluationError, OSError):
    """An output cannot be written where asked (its folder is a file, cannot exist, read-only).

    Raised by :mod:`evaluator.atomic` for every tool that writes through it. It is an
    :class:`OSError` too, so callers that already handle write failures as ``OSError`` keep
    working, and an :class:`EvaluationError`, which the ``edgeseg`` CLI reports as one line
    with exit code 2.
    """
