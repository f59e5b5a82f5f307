"""Plug-ins the recovery tests use to make a party host or the driver die at a chosen moment, once (a marker
file remembers that it happened, so the replay or the resumed run goes on)."""
import os
import signal

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
