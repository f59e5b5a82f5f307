"""The floor under bench_vanilla: a hand-written pair of Ray actors doing vanilla SplitNN's step, nothing else.

Client actor: FmnistCNN up to pool2, forward, one actor call to the server carrying the activation (and the
labels), backward with the returned gradient, step. Server actor: the rest of the network, forward, loss,
backward, step, returns the cut gradient. Both one torch thread. Reference: the whole network in this
process, one thread, same batches. No ledger, no meter, no programs: what is left is Ray's round trip.
``--transport socket``: the same steps over one TCP connection between the two actors (raysplit.link's framing,
no Ray call per step), the server's actor thread serving it: what is left is the hand-over between two processes.

    python benchmarks/bench_pair.py [--repeats 3] [--inline-mb 1] [--transport ray|socket]
"""
from __future__ import annotations

import argparse
import os
import socket
import time

import numpy as np
import ray
import torch
from torch import nn

from raysplit.host import configure_torch
from raysplit.link import _recv, _send, _tune
from raysplit.models import fmnist_cnn

CUT = 6          # FmnistCNN layers before the cut (conv1..pool2)


@ray.remote(num_cpus=1)
class Server:
    def __init__(self):
        configure_torch(1, True)
        torch.manual_seed(0)
        self.net = fmnist_cnn()[CUT:]
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)

    def step(self, a: np.ndarray, y: np.ndarray) -> np.ndarray:
        a = torch.from_numpy(a.copy()).requires_grad_(True)
        loss = nn.functional.cross_entropy(self.net(a), torch.from_numpy(y))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return a.grad.numpy()

    def listen(self) -> tuple:
        self.listener = socket.create_server(("127.0.0.1", 0))
        return self.listener.getsockname()

    def serve(self) -> None:
        """Steps over the socket until the client sends None."""
        sock, _ = self.listener.accept()
        _tune(sock)
        with sock:
            while (msg := _recv(sock)) is not None:
                _send(sock, self.step(*msg))


@ray.remote(num_cpus=1)
class Client:
    def __init__(self, server, x: np.ndarray, y: np.ndarray):
        configure_torch(1, True)
        torch.manual_seed(0)
        self.net = fmnist_cnn()[:CUT]
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.05, momentum=0.9)
        self.server, self.x, self.y, self.sock = server, x, y, None

    def connect(self, address: tuple) -> None:
        self.sock = socket.create_connection(address)
        _tune(self.sock)

    def close(self) -> None:
        if self.sock is not None:
            _send(self.sock, None)
            self.sock.close()

    def round(self, steps: int, b: int = 64) -> None:
        for i in range(steps):
            rows = slice(i * b, (i + 1) * b)
            out = self.net(torch.from_numpy(self.x[rows]))
            if self.sock is None:
                g = ray.get(self.server.step.remote(out.detach().numpy(), self.y[rows]))
            else:
                _send(self.sock, (out.detach().numpy(), self.y[rows]))
                g = _recv(self.sock)
            self.opt.zero_grad()
            out.backward(torch.from_numpy(g.copy()))
            self.opt.step()


def reference(x: np.ndarray, y: np.ndarray, steps: int, b: int = 64) -> None:
    torch.manual_seed(0)
    net = fmnist_cnn()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for i in range(steps):
        rows = slice(i * b, (i + 1) * b)
        loss = nn.functional.cross_entropy(net(torch.from_numpy(x[rows])), torch.from_numpy(y[rows]))
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--inline-mb", type=float, default=0, help="Ray's max_direct_call_object_size in MB (0: default)")
    ap.add_argument("--transport", default="ray", choices=["ray", "socket"], help="a Ray call per step, or a socket")
    args = ap.parse_args()
    configure_torch(1, True)
    os.environ.setdefault("RAY_worker_niceness", "0")
    system = {"max_direct_call_object_size": int(args.inline_mb * 2**20)} if args.inline_mb else {}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _system_config=system)
    rng = np.random.default_rng(0)
    n = args.steps * 64
    x, y = rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)
    server = Server.remote()
    client = Client.remote(server, x, y)
    if args.transport == "socket":
        address = ray.get(server.listen.remote())
        serving = server.serve.remote()     # the server's actor thread, until the client's close
        ray.get(client.connect.remote(address))
    ray.get(client.round.remote(20))
    reference(x, y, 20)
    ratios = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        ray.get(client.round.remote(args.steps))
        t1 = time.perf_counter()
        reference(x, y, args.steps)
        t2 = time.perf_counter()
        ratios.append((t1 - t0) / (t2 - t1))
        print(f"pair {t1 - t0:.2f}s  reference {t2 - t1:.2f}s  ratio {ratios[-1]:.3f}", flush=True)
    ray.get(client.close.remote())
    if args.transport == "socket":
        ray.get(serving)
    print(f"median ratio {sorted(ratios)[len(ratios) // 2]:.3f}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
