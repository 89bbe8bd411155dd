"""Errors that the CLI reports as one clear line (exit 2) instead of a traceback."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from a user: a file, a field or a value; the message says what is allowed."""


class ConfigError(UserError):
    """A configuration file with a missing or invalid field."""

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source, self.field, self.problem = source, field, problem
        super().__init__(f"{source}: {field}: {problem}")
