"""User-facing errors: one line naming the field, the bad value and what is allowed (exit code 2)."""
from __future__ import annotations


class RaysplitError(Exception):
    """An error the user can fix; the CLI prints its message as one line and exits with ``exit_code``."""
    exit_code = 2


class ConfigError(RaysplitError):
    def __init__(self, field: str, value: object, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: {value!r} is not allowed; expected {allowed}")


class DataError(RaysplitError):
    """Missing or malformed data files; the message says how to get them."""


class PartyLost(RaysplitError):
    """Party hosts died more often than ``runtime.max_failures`` allows; the run can be resumed."""
    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) asked the run to stop; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
