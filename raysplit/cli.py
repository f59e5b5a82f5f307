"""The ``raysplit`` command: run | compare | validate | costs | codecs | plot."""
from __future__ import annotations

import argparse
import logging
import sys

from raysplit.errors import RaysplitError


def _load(args):
    from raysplit import config

    overrides = list(args.set or [])
    if getattr(args, "address", None):
        overrides.append(f"runtime.address={args.address}")
    return config.load(args.config, overrides)


def cmd_run(args) -> int:
    from raysplit.experiment import run

    cfg = _load(args)
    result = run(cfg, out_dir=args.out, progress=not args.quiet)
    last = result.metrics.iloc[-1]
    print(f"test accuracy {last['test_acc']:.4f} after {int(last['round'])} rounds; "
          f"results in {result.out_dir}")
    return 0


def cmd_compare(args) -> int:
    from raysplit.compare import compare

    cfg = _load(args)
    result = compare(cfg, out_dir=args.out, progress=not args.quiet)
    print(result.table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"results in {result.out_dir}")
    if not args.no_plots:
        from analysis.plots import make_report

        print(f"report: {make_report([result.out_dir], result.out_dir / 'report')['report']}")
    return 0


def cmd_validate(args) -> int:
    import yaml

    from raysplit import config
    from raysplit.experiment import prepare

    cfg = _load(args)
    plan = prepare(cfg)
    print(yaml.safe_dump(config.to_dict(cfg), sort_keys=False), end="")
    print(f"# ok: {len(plan.dataset.train_y)} training samples over {cfg.data.num_clients} clients; "
          f"segments: {', '.join(f'{s.name}@{s.owner}' for s in plan.topology.segments)}")
    return 0


def cmd_costs(args) -> int:
    from analysis import cost_model

    return cost_model.main(args.rest)


def cmd_codecs(args) -> int:
    from analysis import codecs

    return codecs.main(args.rest)


def cmd_plot(args) -> int:
    from analysis import plots

    return plots.main(args.rest)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see experiments/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set training.lr=0.01 --set data.num_clients=100")
    p.add_argument("--address", help="attach to a running Ray cluster (e.g. auto, ray://head:10001)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysplit", description="Split learning vs federated learning on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train one experiment and write a results directory")
    _config_args(p)
    p.add_argument("--out", help="results directory (default results/<name>-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("compare", help="run SplitNN, FedAvg and large-batch SGD on the same data, model and seed "
                                       "into one results directory (per-method overrides: the config's compare section)")
    _config_args(p)
    p.add_argument("--out", help="results directory (default results/<name>-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true", help="skip the figures and report.md (written to <out>/report)")
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("validate", help="check a config (data, model, cuts) and print it resolved")
    _config_args(p)
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser("costs", help="analytic cost model and the papers' tables (see `raysplit costs -h`)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_costs)
    p = sub.add_parser("codecs", help="train a config under each cut-layer codec setting: accuracy vs client GB "
                                      "(see `raysplit codecs -h`)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_codecs)
    p = sub.add_parser("plot", help="figures and a report from results directories (see `raysplit plot -h`)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_plot)
    return parser


class SetupHeldBack(logging.StreamHandler):
    """raysplit's log on stderr, except that the setup lines (``runtime.py``: Ray's resources, party hosts
    ready) are held back until the run logs something itself: input refused during setup (e.g. more CPUs
    than the cluster has) then leaves exactly one line on stderr, its error."""

    SETUP_MODULES = ("runtime",)

    def __init__(self):
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        self.held: list[logging.LogRecord] = []
        self.released = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.released and record.module in self.SETUP_MODULES:
            self.held.append(record)
            return
        self.show_held()
        self._emit(record)

    def _emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr            # the current one (tests capture it per test)
        super().emit(record)

    def show_held(self) -> None:        # (not ``release``: that is the handler's lock)
        self.released = True
        held, self.held = self.held, []
        for record in held:
            self._emit(record)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("raysplit")
    handler, propagate, level = SetupHeldBack(), log.propagate, log.level
    log.addHandler(handler)
    log.propagate = False                   # this handler prints raysplit's lines (not the root's as well)
    log.setLevel(logging.INFO)
    try:
        code = args.fn(args)
        handler.show_held()
        return code
    except RaysplitError as e:
        handler.held.clear()                # the setup that led to the refusal is not worth a line
        print(f"raysplit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        handler.show_held()
        print("raysplit: interrupted", file=sys.stderr)
        return 130
    finally:
        handler.show_held()
        log.removeHandler(handler)
        log.propagate, log.level = propagate, level


if __name__ == "__main__":
    sys.exit(main())
