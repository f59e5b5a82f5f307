"""An algorithm: FedProx (Li et al., 2020), FedAvg whose clients add (mu/2)·||w - w_global||² to their
loss. Only what differs is written: the client program, and the driver that installs it."""
from raysplit.algorithms import ALGORITHMS
from raysplit.algorithms.fedavg import FedAvg
from raysplit.algorithms.whole_model import WholeModelClient

MU = 0.1


class FedProxClient(WholeModelClient):
    def local_train(self, client, round_, weights, steps=None):
        self.anchor = None               # the global weights this turn starts from (taken at its first step)
        return super().local_train(client, round_, weights, steps)

    def _forward_backward(self, me, idx):
        if self.anchor is None:
            self.anchor = [p.detach().clone() for p in self.whole.parameters()]
        stats = super()._forward_backward(me, idx)
        for p, w0 in zip(self.whole.parameters(), self.anchor):   # the proximal term's gradient
            p.grad.add_(p.detach() - w0, alpha=MU)
        return stats


@ALGORITHMS.register("fedprox")
class FedProx(FedAvg):
    CLIENT_PROGRAM = FedProxClient
