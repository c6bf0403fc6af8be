"""The `moe-harness` command line: list, run, sweep, plan, plot, report, export, convert, rate, reference, check.

    moe-harness list
    moe-harness run experiments/smoke.toml [--out results] [--device auto] [--set key=value ...]

Bad input ends with a one-paragraph error naming the key or file, and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.errors import EXIT_POISONED, DevicePoisoned, RunsFailed
from harness.metric_registry import BALANCED_MAXVIO

STORAGE_ENV = "MOE_HARNESS_STORAGE"  # harness.suites.storage.ENV (not imported here: it pulls in Optuna)
USER_ERRORS = (ValueError, FileNotFoundError)  # what a user got wrong; anything else is a bug



def cmd_list(args: argparse.Namespace) -> None:
    from harness.routing import describe, router_names

    width = max(map(len, router_names()))
    for name in router_names():
        print(f"{name:<{width}}  {describe(name)}")


def cmd_run(args: argparse.Namespace) -> None:
    from harness.suites import runner

    runner.run_suite_file(args.suite, out_dir=args.out, device=args.device, overrides=args.set,
                              progress=args.progress, storage=args.storage, jobs=args.jobs, argv=args.argv,
                              heartbeat_s=args.heartbeat, dist_backend=args.dist_backend)


def cmd_sweep(args: argparse.Namespace) -> None:
    from harness.suites import sweep

    sweep.run_sweep_file(
        args.sweep, out_dir=args.out, storage=args.storage, n_trials=args.n_trials,
        device=args.device, overrides=args.set, progress=args.progress, heartbeat_s=args.heartbeat,
        study_name=args.study_name,
    )


def cmd_plot(args: argparse.Namespace) -> None:
    from harness.analysis import report

    for path in report.write_plots(args.dir, fmt=args.format, out=args.out):
        print(path)


def cmd_export(args: argparse.Namespace) -> None:
    from harness import tables

    if not tables.has_results(args.dir):
        raise FileNotFoundError(2, "No results (run `moe-harness run SUITE.toml` first)", str(args.dir))
    for path in tables.export(args.dir, args.to):
        print(path)


def cmd_convert(args: argparse.Namespace) -> None:
    from harness import tables

    if not tables.has_results(args.dir):
        raise FileNotFoundError(2, "No results (run `moe-harness run SUITE.toml` first)", str(args.dir))
    if tables.convert_legacy(args.dir):
        print(f"{args.dir}: one file per run in runs/, steps/ and loads/; the old files are in "
              f"{Path(args.dir) / 'legacy'}")
    else:
        print(f"{args.dir}: already one file per run; nothing to convert")


def cmd_plan(args: argparse.Namespace) -> None:
    from harness.suites.plan import plan_text

    print(plan_text(args.suite, args.pilot, args.effect, args.jobs))


def cmd_rate(args: argparse.Namespace) -> None:
    from harness.analysis.rate import rate_command

    print(rate_command(args.dir, args.steps, args.tokens_per_step, args.variant, args.objective, args.cap, args.check,
                       args.experts, args.top_k))


def cmd_reference(args: argparse.Namespace) -> None:
    from harness.analysis import reference

    root = Path(args.root)
    if not (root / "results" / "reference").is_dir():
        raise FileNotFoundError(2, "No results/reference/ here (run it from the repository's root, or give --root)",
                                str(root / "results" / "reference"))
    if args.action == "ship":
        if len(args.names) not in (1, 2):
            raise ValueError("moe-harness reference ship NAME [SOURCE]: give the study's name and its results "
                             "folder or benchmark JSON file, e.g. ship methods results/methods (no SOURCE: a study "
                             "its page makes by code)")
        for path in reference.ship(root, args.names[0], Path(args.names[1]) if len(args.names) == 2 else None):
            print(path)
    elif args.action == "build":
        for path in reference.build(root, args.names or None):
            print(path)
    else:
        problems = reference.check(root, args.names or None)
        print("\n".join(problems) if problems else "every reference page and README block is what its data gives")
        if problems:
            raise RunsFailed(f"{len(problems)} reference file(s) differ from their data: run `moe-harness reference "
                             "build` and read the diff, or fix the data")


def cmd_check(args: argparse.Namespace) -> None:
    import torch

    from harness.check import run_checks
    from harness.check.report import report_paths, table, write_report
    from harness.check.targets import factory

    paths = report_paths(args.report) if args.report else None
    make = factory(args.target)
    results = run_checks(make, args.only, torch.float32 if args.dtype == "float32" else torch.bfloat16)
    print(table(args.target, results))
    if paths:
        write_report(paths, args.target, results, args.dtype)
        print(f"wrote {paths[0]} and {paths[1]}")
    failed = [r.name for r in results if r.verdict == "fail"]
    if failed:
        raise RunsFailed(f"{len(failed)} check(s) failed: {', '.join(failed)}")


def cmd_report(args: argparse.Namespace) -> None:
    from harness.analysis import report

    for path in report.write_report(args.dir, out=args.out):
        print(path)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options `run` and `sweep` share."""
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run-config key, e.g. --set train.steps=50 (repeatable)")
    p.add_argument("--storage", default=os.environ.get(STORAGE_ENV) or None, metavar="URL",
                   help="Optuna storage URL shared by every worker: sqlite:///PATH, postgresql://USER@HOST/DB, "
                        f"mysql://USER@HOST/DB or journal:PATH (default: env {STORAGE_ENV}; keep passwords "
                        "there, in PGPASSWORD or in ~/.pgpass rather than on a command line)")
    p.add_argument("--heartbeat", type=int, default=30, metavar="SECONDS",
                   help="worker heartbeat on an RDB storage; a worker silent for 3 beats is presumed dead and "
                        "its run is retried (default 30)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--threads", default=None, metavar="N|auto",
                   help="CPU threads per run: auto (default; env MOE_HARNESS_THREADS) starts with torch's count "
                        "and follows the cores other processes leave free; N fixes N (bit-identical reruns on a "
                        "busy machine)")


def add_run(sub) -> None:
    run = sub.add_parser("run", help="run an ablation suite (TOML)")
    run.add_argument("suite")
    add_run_options(run)
    run.add_argument("--jobs", default=os.environ.get("MOE_HARNESS_JOBS", "auto"), metavar="N|auto",
                     help="start N local workers on one storage (SQLite in the results folder unless --storage): "
                          "one GPU each, or the CPU cores split between them. auto (default; env MOE_HARNESS_JOBS): "
                          "one per GPU, on CPU one single-thread worker per core up to 4; 1 runs in this process")
    run.add_argument("--dist-backend", default="auto", choices=["auto", "nccl", "gloo"],
                     help="under torchrun: the process-group backend (auto: nccl on CUDA, gloo on CPU)")
    run.set_defaults(fn=cmd_run)


def add_sweep(sub) -> None:
    sweep = sub.add_parser("sweep", help="run an Optuna study (TOML)")
    sweep.add_argument("sweep")
    add_run_options(sweep)
    sweep.add_argument("--n-trials", type=int, default=None, help="trials to add in this process")
    sweep.add_argument("--study-name", default=None,
                       help="the Optuna study to add to (default: the sweep's name); a new name starts a new study")
    sweep.set_defaults(fn=cmd_sweep)


def add_readers(sub) -> None:
    """The commands that read a results folder back."""
    plot = sub.add_parser("plot", help="draw the comparison figures of a suite folder")
    plot.add_argument("dir")
    plot.add_argument("--format", default="png", choices=["png", "svg", "pdf"])
    plot.add_argument("--out", default=None, help="folder for plots/ (default: DIR; required for shipped data)")
    plot.set_defaults(fn=cmd_plot)
    exp = sub.add_parser("export", help="write single-file runs/steps/loads.parquet of a results folder")
    exp.add_argument("dir")
    exp.add_argument("--to", default=None, help="destination folder (default: DIR/export)")
    exp.set_defaults(fn=cmd_export)
    conv = sub.add_parser("convert", help="split a folder of single-file tables (moe-harness 0.1) into one file "
                                          "per run, so that runs can be added to it (the old files go to legacy/)")
    conv.add_argument("dir")
    conv.set_defaults(fn=cmd_convert)
    rep = sub.add_parser("report", help="write an HTML + Markdown report of a suite folder")
    rep.add_argument("dir")
    rep.add_argument("--out", default=None, help="folder for the report (default: DIR; required for shipped data)")
    rep.set_defaults(fn=cmd_report)


def add_answers(sub) -> None:
    """The commands that answer a question from results: plan, rate, reference."""
    plan = sub.add_parser("plan", help="the seeds each comparison of a suite needs for 80 %% power, and the hours "
                                        "they cost, from a pilot's paired spread")
    plan.add_argument("suite")
    plan.add_argument("--pilot", required=True, metavar="DIR", help="a finished suite's results folder or a shipped "
                      "study's data (results/reference/data/NAME)")
    plan.add_argument("--effect", type=float, default=None, help="the smallest difference that matters where the "
                      "suite has no margin (default 0.02 in val loss)")
    plan.add_argument("--jobs", type=int, default=1, help="workers the suite will run on (splits the hours)")
    plan.set_defaults(fn=cmd_plan)
    rate = sub.add_parser("rate", help="recommend a bias rate u for a target run from a results folder's dynamics")
    rate.add_argument("dir")
    rate.add_argument("--steps", type=int, required=True, help="the target run's optimizer steps")
    rate.add_argument("--tokens-per-step", type=int, default=None, help="the target's tokens per step (checked "
                      "against the measured runs)")
    rate.add_argument("--variant", default=None, help="only the runs of this variant label")
    rate.add_argument("--objective", default="val_loss", help="a transfer study's best rate per cell: val_loss "
                      "(lowest val loss under --cap, default) or maxvio_time (lowest time-averaged MaxVio_batch)")
    rate.add_argument("--cap", type=float, default=BALANCED_MAXVIO,
                      help=f"the MaxVio_global cap of the val_loss objective ({BALANCED_MAXVIO})")
    rate.add_argument("--experts", type=int, default=None, help="the target's routed experts (warned if unmeasured)")
    rate.add_argument("--top-k", type=int, default=None, help="the target's k (warned if unmeasured)")
    rate.add_argument("--check", default=None, metavar="DIR", help="a direct sweep of rates at the target: is the "
                      "prediction inside its flat optimum?")
    rate.set_defaults(fn=cmd_rate)
    ref = sub.add_parser("reference", help="ship a study's data into results/reference, rebuild the reference pages "
                                           "and README blocks from it, or check that they match it")
    ref.add_argument("action", choices=["ship", "build", "check"])
    ref.add_argument("names", nargs="*", help="ship: NAME [RESULTS_DIR or benchmark JSON]; build / check: pages (default: all)")
    ref.add_argument("--root", default=".", help="the repository's root (default: here)")
    ref.set_defaults(fn=cmd_reference)


def add_check(sub) -> None:
    check = sub.add_parser("check", help="run a router (a preset, a family's own gate, or your module) through "
                                         "the bug classes users keep reporting")
    check.add_argument("target", help="a router preset (loss_free), family:NAME (a transformers family's own gate) "
                                      "or module:path/to/file.py:factory (your adapter; see examples/my_router.py)")
    check.add_argument("--report", default=None, metavar="FILE", help="also write FILE.md and FILE.json")
    check.add_argument("--only", nargs="+", default=None, metavar="CLASS", help="only these classes (default: all)")
    check.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16",
                       help="the precision of the autocast classes (float32: they are n/a)")
    check.set_defaults(fn=cmd_check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-harness", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print every registered router preset").set_defaults(fn=cmd_list)
    add_run(sub)
    add_sweep(sub)
    add_readers(sub)
    add_answers(sub)
    add_check(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        from harness.suites.specfile import load_env_plugins

        load_env_plugins()  # MOE_HARNESS_PLUGINS: methods of the user's own, for every command
        from harness.engine import determinism

        determinism.apply()  # MOE_HARNESS_DETERMINISTIC=1: deterministic kernels (a bad value stops here)
        if getattr(args, "threads", None) is not None:  # NOTE: the environment carries it to --jobs workers too
            from harness.engine.threads import ENV, fixed_threads

            os.environ[ENV] = args.threads
            fixed_threads()  # a bad value stops here, before anything runs
        args.fn(args)
    except KeyboardInterrupt:
        print(f"\nmoe-harness {args.command}: interrupted; nothing complete was lost. Run the same command again "
              "to resume where it stopped.", file=sys.stderr)
        return 130
    except RunsFailed as err:
        print(f"moe-harness {args.command}: {err}", file=sys.stderr)
        return 1
    except DevicePoisoned as err:
        print(f"moe-harness {args.command}: {err}", file=sys.stderr)
        return EXIT_POISONED
    except BrokenPipeError:  # `moe-harness rate ... | head`: the reader left; no traceback for that
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except USER_ERRORS as err:
        message = err
        if isinstance(err, FileNotFoundError) and err.filename:
            message = f"file not found: {err.filename}"
        print(f"moe-harness {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()
    return 0


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
