"""A plug-in: here an observer of what the server receives at the cut, reported per round in metrics.csv,
and an extra client-side loss (a small penalty on the size of the cut activations)."""
from raysplit.plugins import PLUGINS, Plugin


@PLUGINS.register("cut_stats")
class CutStats(Plugin):
    def __init__(self, penalty: float = 0.0):
        self.penalty = penalty
        self.abs_sum, self.values, self.messages = 0.0, 0, 0

    def client_loss(self, x, z):
        return self.penalty * z.pow(2).mean() if self.penalty else None

    def observe(self, parcel, payload):
        if parcel.kind == "activation":          # runs on the party that received it (read-only)
            self.abs_sum += float(payload.abs().sum())
            self.values += payload.numel()
            self.messages += 1

    def metrics(self):
        """{column: (sum, weight)}: the hosts' sums are added, then divided."""
        out = {}
        if self.values:
            out = {"cut_abs_mean": (self.abs_sum, self.values), "cut_messages": (self.messages, 1)}
        self.abs_sum, self.values, self.messages = 0.0, 0, 0
        return out
