"""Plug-ins the recovery tests use to make a party host or the driver die at a chosen moment, once (a marker
file remembers that it happened, so the replay or the resumed run goes on)."""
import os
import signal
import threading

from raysplit.plugins import Plugin


class KillHostAt(Plugin):
    """SIGKILL the process of party host ``target`` when it receives its ``after``-th message of round
    ``at_round`` (0-based): in the middle of that round."""

    def __init__(self, target: str, at_round: int = 1, after: int = 2, marker: str | None = None):
        self.target, self.at_round, self.after, self.marker = target, at_round, after, marker
        self.seen = 0

    def observe(self, parcel, payload):
        h = self.host
        if h is None or h.name != self.target or h.ledger.round != self.at_round:
            return
        self.seen += 1
        if self.seen >= self.after and not (self.marker and os.path.exists(self.marker)):
            if self.marker:
                open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


class SignalDriverAt(Plugin):
    """Send ``signum`` to the driver right after it evaluates round ``at_round`` (0-based), once."""

    def __init__(self, at_round: int = 1, signum: int = 9, marker: str | None = None):
        self.at_round, self.signum, self.marker = at_round, signum, marker
        self.evaluations = 0

    def evaluate(self, model, dataset):
        self.evaluations += 1
        if self.evaluations == self.at_round + 1 and not (self.marker and os.path.exists(self.marker)):
            if self.marker:
                open(self.marker, "w").close()
            os.kill(os.getpid(), self.signum)
        return {}


# party host name -> the process id Ray reports for it, for the hosts now running (the fault campaign's
# start_hosts wrapper keeps it up to date, a restart included)
PIDS: dict[str, int] = {}


class KillFromOutside(Plugin):
    """The world's fault: on the driver, once round ``at_round`` (1-based) has been evaluated, another thread
    SIGKILLs party host ``target``'s process ``delay_s`` later, wherever the run then is (a step, a hand-off, a
    fold, a link, the evaluation, the checkpoint), once. The test draws ``delay_s`` from its seed."""

    def __init__(self, target: str, delay_s: float, at_round: int = 1, marker: str = ""):
        self.target, self.delay_s, self.at_round, self.marker = target, delay_s, at_round, marker

    def evaluate(self, model, dataset):
        if self.driver.round == self.at_round and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            pid = PIDS[self.target]
            threading.Timer(self.delay_s, os.kill, (pid, signal.SIGKILL)).start()
        return {}
