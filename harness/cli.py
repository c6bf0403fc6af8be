"""The `moe-harness` command line: list, run, sweep, plot, report.

    moe-harness list
    moe-harness run experiments/smoke.toml [--out results] [--device auto] [--set key=value ...]

Bad input ends with a one-paragraph error naming the key or file, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

USER_ERRORS = (ValueError, FileNotFoundError)  # what a user got wrong; anything else is a bug


def cmd_list(args: argparse.Namespace) -> None:
    from harness.routing import describe, router_names

    width = max(map(len, router_names()))
    for name in router_names():
        print(f"{name:<{width}}  {describe(name)}")


def cmd_run(args: argparse.Namespace) -> None:
    from harness import experiment

    experiment.run_suite_file(args.suite, out_dir=args.out, device=args.device, overrides=args.set)


def cmd_sweep(args: argparse.Namespace) -> None:
    from harness import sweep

    sweep.run_sweep_file(
        args.sweep, out_dir=args.out, storage=args.storage, n_trials=args.n_trials,
        device=args.device, overrides=args.set,
    )


def cmd_plot(args: argparse.Namespace) -> None:
    from harness import report

    for path in report.write_plots(args.dir, fmt=args.format):
        print(path)


def cmd_report(args: argparse.Namespace) -> None:
    from harness import report

    for path in report.write_report(args.dir):
        print(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print every registered router preset").set_defaults(fn=cmd_list)

    def add_run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", default="results", help="output folder (default: results)")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a run-config key, e.g. --set train.steps=50 (repeatable)")

    run = sub.add_parser("run", help="run an ablation suite (TOML)")
    run.add_argument("suite")
    add_run_options(run)
    run.set_defaults(fn=cmd_run)

    sweep = sub.add_parser("sweep", help="run an Optuna study (TOML)")
    sweep.add_argument("sweep")
    add_run_options(sweep)
    sweep.add_argument("--storage", default=None, help="Optuna storage URL (default: SQLite in the output folder)")
    sweep.add_argument("--n-trials", type=int, default=None, help="trials to add in this process")
    sweep.set_defaults(fn=cmd_sweep)

    plot = sub.add_parser("plot", help="draw the comparison figures of a suite folder")
    plot.add_argument("dir")
    plot.add_argument("--format", default="png", choices=["png", "svg", "pdf"])
    plot.set_defaults(fn=cmd_plot)

    rep = sub.add_parser("report", help="write an HTML + Markdown report of a suite folder")
    rep.add_argument("dir")
    rep.set_defaults(fn=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except USER_ERRORS as err:
        message = err
        if isinstance(err, FileNotFoundError) and err.filename:
            message = f"file not found: {err.filename}"
        print(f"moe-harness {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
