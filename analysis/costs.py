"""``raysplit costs``: the analytic cost model from the command line, no training.

    raysplit costs query --model M --input-shape C,H,W --classes K --cut LAYER --samples-per-client n --clients N
                         [--network YAML] ...   FLOPs and bytes per client of SplitNN, FedAvg and large-batch SGD
                                                (with --network, also each method's simulated time on it)
    raysplit costs tables [--out FILE]          the papers' Tables 1 and 2 beside ours (Markdown)
    raysplit costs crossover [--out FILE]       Singh et al.'s crossover: bytes per client against the clients
    raysplit costs time [--out FILE] [--network YAML]   the same crossover in simulated time

The numbers come from analysis/cost_model.py (bytes and FLOPs) and analysis/time_model.py (time on a
network); the tables from analysis/paper_tables.py, the figures from analysis/crossover.py and time_model.py.
Also ``python -m analysis.costs ...``.
"""
from __future__ import annotations

import argparse
import sys

from analysis.cost_model import (HANDOFF_MODES, OPTIMIZERS, _shape, fedavg_costs, large_batch_sgd_costs,
                                 splitnn_costs)
from analysis.crossover import plot_crossover
from analysis.paper_tables import write_tables
from analysis.time_model import fedavg_time, large_batch_sgd_time, plot_time_crossover, splitnn_time
from raysplit import config
from raysplit.errors import RaysplitError
from raysplit.network import describe, load_network, resolve


def human(value: float, unit: str) -> str:
    """1234567 'B' -> '1.23 MB' (decimal prefixes, as the papers' GB and TFLOPs)."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def query_table(args: argparse.Namespace) -> str:
    shape = _shape(args.input_shape.split(","))
    common = dict(model=args.model, input_shape=shape, num_classes=args.classes,
                  samples_per_client=args.samples_per_client, num_clients=args.clients,
                  batch_size=args.batch_size)
    bpe = args.bytes_per_element
    rows = [
        splitnn_costs(cuts=args.cut, epochs=args.epochs, bytes_per_element=bpe, optimizer=args.optimizer,
                      handoff=args.handoff, **common),
        fedavg_costs(rounds=args.rounds or args.epochs, local_epochs=args.local_epochs, bytes_per_element=bpe,
                     **common),
        large_batch_sgd_costs(epochs=args.epochs, bytes_per_element=bpe, **common),
    ]
    lines = [f"per client: {args.model} {'x'.join(map(str, shape))} cut {','.join(map(str, args.cut))}, "
             f"{args.samples_per_client} samples x {args.clients} clients, batch {args.batch_size}; "
             f"SplitNN and LB-SGD {args.epochs} epoch(s), FedAvg {args.rounds or args.epochs} round(s) "
             f"x {args.local_epochs} local epoch(s)",
             "| method | client FLOPs | server FLOPs | client sent | client received | client total |",
             "|---|---|---|---|---|---|"]
    for c in rows:
        lines.append(f"| {c.method} | {human(c.client_flops, 'FLOP')} | {human(c.server_flops, 'FLOP')} | "
                     f"{human(c.client_bytes_sent, 'B')} | {human(c.client_bytes_received, 'B')} | "
                     f"{human(c.client_bytes, 'B')} |")
    return "\n".join(lines)


def time_table(args: argparse.Namespace, network) -> str:
    shape = _shape(args.input_shape.split(","))
    common = dict(model=args.model, input_shape=shape, num_classes=args.classes,
                  samples_per_client=args.samples_per_client, num_clients=args.clients, batch_size=args.batch_size,
                  network=network, bytes_per_element=args.bytes_per_element)
    times = {"splitnn": splitnn_time(cuts=args.cut, epochs=args.epochs, optimizer=args.optimizer,
                                     handoff=args.handoff, **common),
             "fedavg": fedavg_time(rounds=args.rounds or args.epochs, local_epochs=args.local_epochs, **common),
             "large_batch_sgd": large_batch_sgd_time(epochs=args.epochs, **common)}
    lines = [f"\nsimulated time, all clients: {describe(network)}; {network.client.flops_per_s:.3g} FLOP/s per party",
             "| method | transfer (s) | compute (s) | total (s) |", "|---|---|---|---|"]
    lines += [f"| {m} | {t.comm_s:.4g} | {t.compute_s:.4g} | {t.total_s:.4g} |" for m, t in times.items()]
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """argparse that raises a one-line error instead of printing usage and exiting."""

    def error(self, message: str):
        raise RaysplitError(f"{self.prog}: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="raysplit costs", description="Analytic cost model and the papers' tables.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("tables", help="regenerate the paper tables (Markdown; a few minutes on a CPU)")
    t.add_argument("--out", default="paper_tables.md",
                   help="where to write them (default: paper_tables.md in the current directory)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    c = sub.add_parser("crossover", help="plot SplitNN vs FedAvg bytes per client against the number of clients")
    c.add_argument("--out", default="crossover.png",
                   help="where to write the figure (default: crossover.png in the current directory)")
    ct = sub.add_parser("time", help="plot SplitNN vs FedAvg simulated time as clients, data per client, model size "
                                     "and client uplink vary (the network model of raysplit/network.py)")
    ct.add_argument("--out", default="crossover_time.png",
                    help="where to write the figure (default: crossover_time.png in the current directory)")
    ct.add_argument("--network", metavar="YAML", help="a YAML file with a network: section (default: the clinic "
                                                       "default; compute speed: this machine's, measured once)")
    q = sub.add_parser("query", help="FLOPs and bytes per client of the three methods")
    q.add_argument("--model", required=True, help="a registered model, e.g. fmnist_cnn, vgg16, resnet50")
    q.add_argument("--input-shape", required=True, help="one sample's shape, channels first: e.g. 1,28,28")
    q.add_argument("--classes", type=int, required=True, help="the number of classes (the model's output size)")
    q.add_argument("--cut", action="append", required=True, help="cut layer (repeat for several)")
    q.add_argument("--samples-per-client", type=int, required=True, help="training samples each client holds")
    q.add_argument("--clients", type=int, required=True, help="the number of clients")
    q.add_argument("--epochs", type=int, default=1,
                   help="passes over every client's data of SplitNN and large-batch SGD (default 1)")
    q.add_argument("--rounds", type=int, default=None, help="FedAvg rounds (default: --epochs)")
    q.add_argument("--local-epochs", type=int, default=1, help="FedAvg: passes over its data per round (default 1)")
    q.add_argument("--batch-size", type=int, default=64, help="samples per step at each client (default 64)")
    q.add_argument("--bytes-per-element", type=int, default=4,
                   help="bytes of each value sent: 4 for float32 (default), 2 for float16, 1 for int8")
    q.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd_momentum",
                   help="the client optimizer, whose state SplitNN hands on with the weights (default sgd_momentum)")
    q.add_argument("--handoff", choices=HANDOFF_MODES, default="peer",
                   help="SplitNN's hand-off of client-side weights: to the next client (peer, default) or through "
                        "the server")
    q.add_argument("--network", metavar="YAML", help="also the simulated time of each method on this network "
                                                      "(a YAML file with a network: section)")
    return p


def _network(path: str | None):
    """The network config of a YAML file's network: section (validated as a config's), else the default."""
    raw = {"network": load_network(path)} if path else {}
    return resolve(config.from_dict(raw)).network


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command == "query":
            network = _network(args.network) if args.network else None     # refused before any output
            print(query_table(args))
            if network is not None:
                print(time_table(args, network))
        elif args.command == "time":
            print(f"wrote {plot_time_crossover(args.out, _network(args.network))}")
        elif args.command == "tables":
            print(f"wrote {write_tables(args.out, progress=not args.quiet)}")
        elif args.command == "crossover":
            print(f"wrote {plot_crossover(args.out)}")
    except RaysplitError as err:
        print(f"raysplit: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
