"""Errors raised by the evaluator for invalid input; each message is one line naming the file."""

from __future__ import annotations


class EvaluationError(ValueError):
    """Invalid evaluation input (unreadable file, geometry mismatch, unknown labels, ...)."""

    exit_code = 2
