"""The ``raysplit`` command: run | compare | sweep | validate | infer | costs | codecs | plot.

The top floor (tests/test_floors.py): the one module that may import both raysplit's application and
``analysis`` (whose commands costs | codecs | plot are). Each command imports what it runs when it runs, so
``raysplit -h`` and a refused config answer without loading torch, Ray or matplotlib.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from raysplit.errors import ConfigError, Interrupted, RaysplitError


def _version() -> str:
    import raysplit

    return raysplit.__version__


def _load(args):
    from raysplit import config

    overrides = list(args.set or [])
    if getattr(args, "address", None):
        overrides.append(f"runtime.address={args.address}")
    return config.load(args.config, overrides)


def _done(out_dir, figures: str | None = None) -> None:
    """The closing block: where the results are and the command that plots them."""
    print(f"results: {out_dir}")
    if figures:
        print(f"figures: {figures}")
    else:
        print(f"plot:    raysplit plot {out_dir} --out {out_dir}/report")


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
        cfg = config.load(resume / "config.yaml", _address(args))
        result = run(cfg, progress=not args.quiet, resume=resume)
    else:
        if not args.config:
            raise ConfigError("config", None, "a config file (raysplit run CONFIG), or --resume DIR")
        cfg = _load(args)
        result = run(cfg, out_dir=args.out, progress=not args.quiet)
    last = result.metrics.iloc[-1]
    print(f"\ndone: {cfg.name}, test accuracy {last['test_acc']:.4f} after {int(last['round'])} rounds; "
          f"client {last['client_tflops_per_client_cum']:.4g} TFLOPs and {last['client_gb_per_client_cum']:.4g} GB "
          f"per client; {last['wall_s_cum']:.1f} s")
    _done(result.out_dir)
    return 0


def cmd_compare(args) -> int:
    from raysplit.compare import compare

    cfg = _load(args)
    result = compare(cfg, out_dir=args.out, progress=not args.quiet)
    print()
    print(result.table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    report = None
    if not args.no_plots:
        from analysis.plots import make_report

        report = make_report([result.out_dir], result.out_dir / "report")["report"]
    _done(result.out_dir, report)
    return 0


def cmd_sweep(args) -> int:
    from raysplit import sweep

    base = _load(args)           # the config and --set are checked before any grid point
    grid = {**base.sweep.grid, **(sweep.parse_grid(args.grid) if args.grid else {})}
    if not grid and not base.sweep.points:
        raise ConfigError("--grid", None, "at least one KEY=VALUES, or a sweep: section in the config "
                          "(grid: {field: [values]} and/or points: [{field: value}])")
    result = sweep.sweep(args.config, list(args.set or []) + _address(args), grid,
                         out_dir=args.out, progress=not args.quiet, base=base, points=base.sweep.points)
    print()
    shown = result.table.drop(columns=["results"]).fillna({"error": ""})
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    failed = int(result.table["error"].notna().sum())
    if failed:
        print(f"{failed} of {len(result.table)} trials failed (see the error column)")
    if result.has_privacy_measures:          # the privacy study: accuracy against leakage, one point per setting
        from analysis.privacy_utility import privacy_report

        privacy_report(result.table, result.keys, result.out_dir, title=result.name)
    print(f"results: {result.out_dir}\ntable:   {result.out_dir / 'trials.csv'}\nfigures: {result.out_dir}/*.png")
    return 1 if failed == len(result.table) else 0


def _address(args) -> list[str]:
    return [f"runtime.address={args.address}"] if getattr(args, "address", None) else []


def cmd_validate(args) -> int:
    """One line per config: ok, or the error; exit 2 if any is bad."""
    import yaml

    from raysplit import config
    from raysplit.experiment import prepare

    bad = 0
    for path in args.config:
        try:
            cfg = config.load(path, list(args.set or []))
            plan = prepare(cfg)
        except RaysplitError as e:
            bad += 1
            print(f"raysplit: error: {path}: {e}", file=sys.stderr)
            continue
        if args.print:
            print(yaml.safe_dump(config.to_dict(cfg), sort_keys=False), end="")
        segments = ", ".join(f"{s.name}@{s.owner}" for s in plan.topology.segments)
        print(f"ok: {path} ({cfg.algorithm}, {cfg.topology}; {len(plan.dataset.train_y)} training samples over "
              f"{cfg.data.num_clients} clients; segments: {segments})")
    return 2 if bad else 0


# costs | codecs | plot are analysis's commands: their own parsers take every argument, -h included, in any order
# (imported when called: `raysplit -h` and the other commands start without matplotlib)
def cmd_costs(argv: list[str]) -> int:
    from analysis import costs

    return costs.main(argv)


def cmd_codecs(argv: list[str]) -> int:
    from analysis import codecs

    return codecs.main(argv)


def cmd_plot(argv: list[str]) -> int:
    from analysis import plots

    return plots.main(argv)


def cmd_infer(args) -> int:
    from raysplit.inference import infer

    result = infer(args.results, data=args.data, batch_size=args.batch_size, address=args.address, out_dir=args.out,
                   network=args.network)
    s = result.summary
    acc = f"accuracy {s['accuracy']:.4f}, " if "accuracy" in s else ""
    print(f"{acc}{s['samples']} samples in {s['batches']} batches, median latency {s['latency_ms_median']:.1f} ms "
          f"per batch measured, {s['sim_latency_ms']:.1f} ms simulated ({s['sim_comm_ms']:.1f} ms transfer, "
          f"{s['sim_compute_ms']:.1f} ms compute; {s['network']})")
    print(f"results: {result.out_dir}")
    return 0


PASSTHROUGH = {"costs": cmd_costs, "codecs": cmd_codecs, "plot": cmd_plot}


def _config_args(p: argparse.ArgumentParser, address: bool = True, optional: bool = False) -> None:
    p.add_argument("config", nargs="?" if optional else None, help="experiment YAML (see experiments/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set training.lr=0.01 --set data.num_clients=100")
    if address:
        p.add_argument("--address", help="attach to a running Ray cluster (e.g. auto, HEAD_IP:6379)")


VALIDATE_HELP = "check configs (data, model, cuts): one line each; exit 2 if any is bad"


def _validate_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("config", nargs="+", help="experiment YAMLs")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field (in every config)")
    p.add_argument("--print", action="store_true", help="also print each config resolved (all its fields)")
    p.set_defaults(fn=cmd_validate)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysplit", description="Split learning vs federated learning on Ray.",
                                     epilog="raysplit -v COMMAND ...: also show Ray's start-up lines")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Ray's start-up lines (always in run.log)")
    parser.add_argument("-V", "--version", action="version", version=f"raysplit {_version()}")
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
    p = sub.add_parser("sweep", help="run a config at every point of a parameter grid, one Ray Tune trial each; "
                                     "a table and plots across trials")
    _config_args(p)
    p.add_argument("--grid", action="append", metavar="KEY=VALUES",
                   help="a swept field and its values: --grid data.num_clients=10,100 or "
                        "--grid model.cut_layers=[[pool1],[pool2]] (repeat for a grid over several fields); "
                        "optional where the config has a sweep: section (grid and/or points)")
    p.add_argument("--out", help="sweep directory (default results/<name>-sweep-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_sweep)
    _validate_args(sub.add_parser("validate", help=VALIDATE_HELP))
    p = sub.add_parser("infer", help="split inference with a finished run's trained parties (activations forward only)")
    p.add_argument("results", metavar="RESULTS_DIR", help="a finished run's results directory")
    p.add_argument("--data", default="test", help="test (the config's test set) or an .npz file with x (and y)")
    p.add_argument("--batch-size", type=int, help="samples per batch (default: the run's training batch size)")
    p.add_argument("--address", help="attach to a running Ray cluster (e.g. auto)")
    p.add_argument("--out", help="where to write (default RESULTS_DIR/inference)")
    p.add_argument("--network", metavar="YAML", help="simulate the latency on this network (a YAML file with a "
                                                      "network: section; default: the run's)")
    p.set_defaults(fn=cmd_infer)
    # these parse their own arguments (main hands them over before this parser runs); listed here for -h
    sub.add_parser("costs", help="analytic cost model and the papers' tables (see `raysplit costs -h`)")
    sub.add_parser("codecs", help="train a config under each cut-layer codec setting: accuracy vs client GB "
                                  "(see `raysplit codecs -h`)")
    sub.add_parser("plot", help="figures and a report from results directories (see `raysplit plot -h`)")
    return parser


def _stop_on_signals() -> dict:
    """SIGINT and SIGTERM stop the run cleanly (an ``Interrupted`` raised in the main thread: checkpoint kept,
    party hosts and Ray shut down); a second signal exits at once. Returns the handlers it replaced."""
    def handler(signum, frame):
        signal.signal(signal.SIGINT, lambda *_: os._exit(128 + signal.SIGINT))
        signal.signal(signal.SIGTERM, lambda *_: os._exit(128 + signal.SIGTERM))
        raise Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    return previous


def _resume_hint(args, e: BaseException) -> str:
    partial = getattr(e, "partial", None)
    return f"; continue with: raysplit run --resume {partial}" if partial and args.command == "run" else ""


def _shutdown_ray() -> None:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = "-v" in argv[:1] or "--verbose" in argv[:1]
    if verbose:
        argv = argv[1:]
    if argv and argv[0] in PASSTHROUGH:
        command, parse = argv[0], lambda: None
    elif argv and argv[0] == "validate":       # configs and options intermixed: validate a.yaml --set x b.yaml
        parser = _validate_args(argparse.ArgumentParser(prog="raysplit validate", description=VALIDATE_HELP))
        command, parse = None, lambda: parser.parse_intermixed_args(argv[1:])
    else:
        command, parse = None, lambda: build_parser().parse_args(argv)
    args = parse()
    from raysplit import console

    console.setup(verbose=verbose)
    previous = _stop_on_signals()
    try:
        if command:
            return PASSTHROUGH[command](argv[1:])
        return args.fn(args)
    except RaysplitError as e:
        print(f"raysplit: error: {e}{_resume_hint(args, e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(f"raysplit: interrupted ({signal.Signals(signum).name}){_resume_hint(args, e)}", file=sys.stderr)
        _shutdown_ray()
        return 128 + signum
    finally:
        for s, h in previous.items():          # called from Python (tests, notebooks): leave it as it was
            signal.signal(s, h)


if __name__ == "__main__":
    sys.exit(main())
