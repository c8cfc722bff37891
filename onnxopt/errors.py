"""Errors that carry their exit code, so the CLI can turn them into one line without guessing."""

from __future__ import annotations


class OnnxoptError(Exception):
    """Base class: a failure we foresaw and can explain in one line."""

    exit_code = 2


class UsageError(OnnxoptError):
    """Bad command line, pipeline string, pass name or option (exit 2)."""


class BadInputError(OnnxoptError):
    """A model or data file we cannot use: missing, truncated, not ONNX, unsupported (exit 2)."""


class CheckFailedError(OnnxoptError):
    """A numeric or validity check failed (exit 1): the tool worked, the model did not pass."""

    exit_code = 1


class PassFailedError(OnnxoptError):
    """A pass broke its contract (verify-each, change guard); names the pass so users can drop it."""

    exit_code = 1
