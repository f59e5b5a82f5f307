"""The ``raysplit`` command: run | compare | validate | infer | costs | codecs | plot."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from raysplit.errors import ConfigError, Interrupted, RaysplitError


def _load(args):
    from raysplit import config

    overrides = list(args.set or [])
    if getattr(args, "address", None):
        overrides.append(f"runtime.address={args.address}")
    return config.load(args.config, overrides)


def cmd_run(args) -> int:
    from raysplit import config
    from raysplit.experiment import run

    if args.resume:
        # a resumed run keeps its config: only where it runs may change
        if args.config or args.set or args.out:
            raise ConfigError("--resume", args.resume, "no CONFIG, --set or --out beside it (the run continues with "
                              "the config and output directory it started with)")
        resume = Path(args.resume)
        if not (resume / "config.yaml").is_file():
            raise ConfigError("--resume", args.resume, "the .NAME.partial directory of an interrupted run (it holds "
                              "config.yaml and checkpoints/)")
        cfg = config.load(resume / "config.yaml", [f"runtime.address={args.address}"] if args.address else [])
        result = run(cfg, progress=not args.quiet, resume=resume)
    else:
        if not args.config:
            raise ConfigError("config", None, "a config file (raysplit run CONFIG), or --resume DIR")
        result = run(_load(args), out_dir=args.out, progress=not args.quiet)
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


def cmd_infer(args) -> int:
    from raysplit.inference import infer

    result = infer(args.results, data=args.data, batch_size=args.batch_size, address=args.address, out_dir=args.out)
    s = result.summary
    acc = f"accuracy {s['accuracy']:.4f}, " if "accuracy" in s else ""
    print(f"{acc}{s['samples']} samples in {s['batches']} batches, median latency {s['latency_ms_median']:.1f} ms "
          f"per batch; results in {result.out_dir}")
    return 0


def cmd_codecs(args) -> int:
    from analysis import codecs

    return codecs.main(args.rest)


def cmd_plot(args) -> int:
    from analysis import plots

    return plots.main(args.rest)


def _config_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument("config", nargs="?" if optional else None, help="experiment YAML (see experiments/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set training.lr=0.01 --set data.num_clients=100")
    p.add_argument("--address", help="attach to a running Ray cluster (e.g. auto, ray://head:10001)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysplit", description="Split learning vs federated learning on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train one experiment and write a results directory")
    _config_args(p, optional=True)      # not with --resume
    p.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its last checkpoint "
                                                    "(its .NAME.partial directory, as the interruption message says)")
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
    p = sub.add_parser("infer", help="split inference with a finished run's trained parties (activations forward only)")
    p.add_argument("results", metavar="RESULTS_DIR", help="a finished run's results directory")
    p.add_argument("--data", default="test", help="test (the config's test set) or an .npz file with x (and y)")
    p.add_argument("--batch-size", type=int, help="samples per batch (default: the run's training batch size)")
    p.add_argument("--address", help="attach to a running Ray cluster (e.g. auto)")
    p.add_argument("--out", help="where to write (default RESULTS_DIR/inference)")
    p.set_defaults(fn=cmd_infer)
    p = sub.add_parser("codecs", help="train a config under each cut-layer codec setting: accuracy vs client GB "
                                      "(see `raysplit codecs -h`)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_codecs)
    p = sub.add_parser("plot", help="figures and a report from results directories (see `raysplit plot -h`)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_plot)
    return parser


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM stop the run cleanly (an ``Interrupted`` raised in the main thread: checkpoint kept,
    party hosts and Ray shut down); a second signal exits at once."""
    def handler(signum, frame):
        signal.signal(signal.SIGINT, lambda *_: os._exit(128 + signal.SIGINT))
        signal.signal(signal.SIGTERM, lambda *_: os._exit(128 + signal.SIGTERM))
        raise Interrupted(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _resume_hint(args, e: BaseException) -> str:
    partial = getattr(e, "partial", None)
    return f"; continue with: raysplit run --resume {partial}" if partial and args.command == "run" else ""


def _shutdown_ray() -> None:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


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
    _stop_on_signals()
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
        print(f"raysplit: error: {e}{_resume_hint(args, e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        handler.show_held()
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(f"raysplit: interrupted ({signal.Signals(signum).name}){_resume_hint(args, e)}", file=sys.stderr)
        _shutdown_ray()
        return 128 + signum
    finally:
        handler.show_held()
        log.removeHandler(handler)
        log.propagate, log.level = propagate, level


if __name__ == "__main__":
    sys.exit(main())
