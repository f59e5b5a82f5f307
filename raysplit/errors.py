"""User-facing errors: one line naming the field, the bad value and what is allowed (exit code 2)."""
from __future__ import annotations


class RaysplitError(Exception):
    """An error the user can fix; the CLI prints its message as one line and exits with code 2."""


class ConfigError(RaysplitError):
    def __init__(self, field: str, value: object, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: {value!r} is not allowed; expected {allowed}")


class DataError(RaysplitError):
    """Missing or malformed data files; the message says how to get them."""
