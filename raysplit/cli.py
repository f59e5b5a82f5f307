"""The ``raysplit`` command: run | compare | sweep | validate | costs | codecs | plot."""
from __future__ import annotations

import argparse
import logging
import sys

from raysplit.errors import RaysplitError


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
    from raysplit.experiment import run

    cfg = _load(args)
    result = run(cfg, out_dir=args.out, progress=not args.quiet)
    m = result.metrics
    last = m.iloc[-1]
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
    result = sweep.sweep(args.config, list(args.set or []) + _address(args), sweep.parse_grid(args.grid),
                         out_dir=args.out, progress=not args.quiet, base=base)
    print()
    shown = result.table.drop(columns=["results"]).fillna({"error": ""})
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    failed = int(result.table["error"].notna().sum())
    if failed:
        print(f"{failed} of {len(result.table)} trials failed (see the error column)")
    print(f"results: {result.out_dir}\ntable:   {result.out_dir / 'trials.csv'}\nfigures: {result.out_dir}/*.png")
    return 1 if failed == len(result.table) else 0


def _address(args) -> list[str]:
    return [f"runtime.address={args.address}"] if getattr(args, "address", None) else []


def cmd_validate(args) -> int:
    """One line per config: ok, or the error; exit 2 if any is bad."""
    import yaml

    from raysplit import config
    from raysplit.errors import RaysplitError
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


def _passthrough(module: str, argv: list[str]) -> int:
    """costs | codecs | plot: their own parsers take every argument, -h included, in any order."""
    import importlib

    return importlib.import_module(module).main(argv)


PASSTHROUGH = {"costs": "analysis.cost_model", "codecs": "analysis.codecs", "plot": "analysis.plots"}


def _config_args(p: argparse.ArgumentParser, address: bool = True) -> None:
    p.add_argument("config", help="experiment YAML (see experiments/)")
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
    p = sub.add_parser("sweep", help="run a config at every point of a parameter grid, one Ray Tune trial each; "
                                     "a table and plots across trials")
    _config_args(p)
    p.add_argument("--grid", action="append", required=True, metavar="KEY=VALUES",
                   help="a swept field and its values: --grid data.num_clients=10,100 or "
                        "--grid model.cut_layers=[[pool1],[pool2]] (repeat for a grid over several fields)")
    p.add_argument("--out", help="sweep directory (default results/<name>-sweep-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_sweep)
    _validate_args(sub.add_parser("validate", help=VALIDATE_HELP))
    # these parse their own arguments (main hands them over before this parser runs); listed here for -h
    sub.add_parser("costs", help="analytic cost model and the papers' tables (see `raysplit costs -h`)")
    sub.add_parser("codecs", help="train a config under each cut-layer codec setting: accuracy vs client GB "
                                  "(see `raysplit codecs -h`)")
    sub.add_parser("plot", help="figures and a report from results directories (see `raysplit plot -h`)")
    return parser


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
    try:
        if command:
            return _passthrough(PASSTHROUGH[command], argv[1:])
        return args.fn(args)
    except RaysplitError as e:
        print(f"raysplit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raysplit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
