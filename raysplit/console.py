"""What the command line shows in the terminal, and what only goes to a run's run.log.

- raysplit's own lines (``logging.getLogger("raysplit")``) are written with ``tqdm.write``, so they appear
  above the progress bars instead of being glued to the end of a bar's line;
- Ray's start-up messages (token authentication, the cluster's resources, each party host being ready) are
  kept out of the terminal: they are held in a small buffer and written into the run's run.log
  (``replay_startup``) when its results directory is created. Warnings and errors from raysplit itself
  and errors from Ray still reach the terminal.
- the first line comes before Ray starts ("starting a local Ray ..."), and says how long Ray and the party
  hosts took once they are up; a config refused before that line is the error line only.
"""
from __future__ import annotations

import collections
import logging
import sys

from tqdm import tqdm

# raysplit's start-up detail: shown with -v, always in run.log
STARTUP_PREFIXES = ("party host ready: ",)
# the start-up lines everyone sees, logged before a run's run.log exists: written into it afterwards
SHOWN_STARTUP_PREFIXES = ("starting ", "connecting to the Ray cluster", "Ray up in", "party hosts ready")


class TqdmHandler(logging.Handler):
    """A console handler that writes through ``tqdm.write`` (never onto a progress bar's line)."""

    def __init__(self, stream=None):
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream or sys.stderr)
        except Exception:          # noqa: BLE001 - logging must never break a run
            self.handleError(record)


class _ConsoleFilter(logging.Filter):
    """raysplit's INFO lines (not its start-up detail unless verbose); other loggers (Ray) from ERROR up."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "raysplit" or record.name.startswith("raysplit."):
            if record.levelno >= logging.WARNING or self.verbose:
                return True
            return not str(record.msg).startswith(STARTUP_PREFIXES)
        return record.levelno >= logging.ERROR or (self.verbose and record.levelno >= logging.WARNING)


class _StartupBuffer(logging.Handler):
    """Holds the latest log records (raysplit's and Ray's) until a run writes them into its run.log."""

    def __init__(self, size: int = 500):
        super().__init__(level=logging.INFO)
        self.records: collections.deque[logging.LogRecord] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_buffer: _StartupBuffer | None = None
_installed: list[logging.Handler] = []


def setup(verbose: bool = False) -> None:
    """Configure logging for the command line (called once by ``raysplit.cli.main``)."""
    global _buffer, _installed
    root = logging.getLogger()
    for h in _installed:               # called again in the same process (tests): replace, never stack
        root.removeHandler(h)
    console = TqdmHandler()
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    console.addFilter(_ConsoleFilter(verbose))
    _buffer = _StartupBuffer()
    _installed = [console, _buffer]
    for h in _installed:
        root.addHandler(h)
    root.setLevel(logging.INFO)
    quiet_ray()


def quiet_ray() -> None:
    """Route Ray's log records (its "ray" logger writes to stderr itself) through the handlers ``setup``
    installed: errors on the terminal, the rest into run.log. A no-op unless the command line called
    ``setup`` and Ray is imported (``raysplit.runtime.connect`` calls it again just before ``ray.init``)."""
    if _buffer is None or "ray" not in sys.modules:
        return
    lg = logging.getLogger("ray")
    for h in list(lg.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            lg.removeHandler(h)
    lg.propagate = True


def replay_startup(handler: logging.Handler) -> None:
    """Write the buffered start-up records into ``handler`` (a run's run.log), then forget them.
    Records from the ``raysplit`` logger itself are left out: the handler receives those directly."""
    if _buffer is None:
        return
    for record in list(_buffer.records):
        if record.name != "raysplit" or str(record.msg).startswith((*STARTUP_PREFIXES, *SHOWN_STARTUP_PREFIXES)):
            handler.handle(record)
    _buffer.records.clear()
