"""The ``reflow`` command line: run, table, collapse, list."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from reflow import baselines
from reflow.baselines.base import describe_config
from reflow.data import list_datasets
from reflow.errors import ReflowError
from reflow.harness import Grid, Settings, pick_device, run_grid
from reflow.recalibrate import REPAIRS
from reflow.results import ResultStore
from reflow.tables import FORMATS, accuracy_table, expand_config, filter_rows, render, with_defaults
from reflow.zoo import MODELS

EPILOG = """examples:
  REFLOW_HOME=../shared reflow run --model resnet20 --dataset cifar10-jpeg \\
      --method mp,random --repair none,reflow --sparsity 0.4,0.5,0.6,0.7,0.8,0.9 --out runs/table1
  reflow table runs/table1 --format markdown
  reflow collapse runs/table1 --model resnet20 --method mp --sparsity 0.9
  reflow list
"""


def _csv(cast: Callable[[str], object]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(cast(part.strip()) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"cannot parse {text!r}: {exc}") from exc

    return parse


def _method_options(pairs: Sequence[str]) -> dict[str, dict[str, str]]:
    options: dict[str, dict[str, str]] = {}
    for pair in pairs:
        target, eq, value = pair.partition("=")
        method, dot, key = target.partition(".")
        if not (eq and dot and method and key):
            raise ReflowError(
                f"--set takes METHOD.OPTION=VALUE (e.g. mp_mt.min_density=0.01), got {pair!r}"
            )
        options.setdefault(method, {})[key] = value
    return options


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="prune, repair and evaluate a grid; append rows to OUT/results.csv",
        description="Run every (model, checkpoint, dataset, method, repair, sparsity, seed) row "
        "not already in OUT. Safe to interrupt: finished rows are kept, rerunning resumes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", type=_csv(str), required=True, help="comma list; see `reflow list`")
    p.add_argument("--dataset", type=_csv(str), required=True, help="comma list; see `reflow list`")
    p.add_argument("--method", type=_csv(str), default=("mp",), help="comma list of methods")
    p.add_argument(
        "--repair", type=_csv(str), default=("none", "reflow"), help="comma list of repairs"
    )
    p.add_argument("--sparsity", type=_csv(float), required=True, help="comma list in [0, 1)")
    p.add_argument("--seed", type=_csv(int), default=(0,), help="comma list of seeds")
    p.add_argument(
        "--checkpoint",
        type=_csv(str),
        default=(None,),
        help="zoo checkpoint name(s), file path(s) or 'none'; default: the one recorded "
        "best on the dataset",
    )
    p.add_argument("--out", type=Path, required=True, help="results folder")
    p.add_argument(
        "--scope", default="all", choices=["all", "blocks", "chita"], help="prunable weights"
    )
    p.add_argument("--calib-batches", type=int, default=50, help="calibration batches for repairs")
    p.add_argument("--calib-batch-size", type=int, default=128, help="calibration batch size")
    p.add_argument(
        "--recalibrate-layers",
        default="all",
        help="BN layers a repair recalibrates: all, first:K or last:K",
    )
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument(
        "--probe-samples",
        type=int,
        default=2000,
        help="test inputs the BN variance probe covers (0 = off)",
    )
    p.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="METHOD.OPT=VALUE",
        help="method option, repeatable; see `reflow list --verbose`",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="folder with the dataset folders (default: $REFLOW_HOME/data)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    grid = Grid(
        args.model,
        args.dataset,
        args.method,
        args.repair,
        args.sparsity,
        args.seed,
        args.checkpoint,
    )
    settings = Settings(
        args.scope,
        args.calib_batches,
        args.calib_batch_size,
        args.recalibrate_layers,
        args.eval_batch_size,
        args.probe_samples,
        _method_options(args.options),
    )
    grid.validate()
    store = ResultStore(args.out)
    start = time.perf_counter()
    counts = run_grid(
        grid,
        store,
        settings,
        pick_device(args.device),
        args.data_root,
        progress=not args.no_progress,
    )
    return _summarise(counts, start, store)


def _summarise(counts: dict[str, int], start: float, store: ResultStore) -> int:
    """Print what a run or sweep did; exit status 1 when any row ended in an error."""
    print(
        f"{counts['ran']} rows run ({counts['errors']} with errors), {counts['done_before']} "
        f"already done, in {time.perf_counter() - start:.1f} s; results in {store.path('results')}"
    )
    return 1 if counts["errors"] else 0


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="results folder written by `reflow run`")
    p.add_argument("--model", default=None)
    p.add_argument("--dataset", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--method", type=_csv(str), default=None)
    p.add_argument("--repair", type=_csv(str), default=None)


def _cmd_table(args: argparse.Namespace) -> int:
    frame = ResultStore(args.folder, create=False).read()
    rows = filter_rows(
        frame,
        model=args.model,
        dataset=args.dataset,
        checkpoint=args.checkpoint,
        method=args.method,
        repair=args.repair,
    )
    rows = with_defaults(expand_config(rows))  # one repair configuration per table, never mixed
    for (model, ckpt, dataset), group in rows.groupby(["model", "checkpoint", "dataset"]):
        mean, std = accuracy_table(group, args.metric)
        dense = group["dense_top1"].iloc[0]
        if len(rows.groupby(["model", "checkpoint", "dataset"])) > 1 or args.format != "csv":
            print(f"\n{model} ({ckpt}) on {dataset}: {args.metric}, dense top-1 {dense:.2f}\n")
        print(render(mean, std, args.format, args.digits))
    return 0


def _cmd_collapse(args: argparse.Namespace) -> int:
    store = ResultStore(args.folder, create=False)
    probes = store.read("probes")
    rows = filter_rows(
        probes,
        model=args.model,
        dataset=args.dataset,
        checkpoint=args.checkpoint,
        method=args.method,
        repair=args.repair,
        sparsity=args.sparsity,
        seed=args.seed,
    )
    table = rows.pivot_table(
        index=["bn_index", "layer"], columns="repair", values="ratio", aggfunc="mean"
    ).sort_index()
    table.columns.name = None
    print("post-BN variance ratio var_pruned/var_dense (1 = no collapse), mean over seeds\n")
    print(table.droplevel("bn_index").to_markdown(floatfmt=".4f"))
    layers = filter_rows(
        store.read("layers"),
        model=args.model,
        dataset=args.dataset,
        checkpoint=args.checkpoint,
        method=args.method,
        sparsity=args.sparsity,
        seed=args.seed,
    )
    density = layers.groupby(["layer_index", "layer"])["density"].mean().droplevel("layer_index")
    print(
        f"\nper-layer density (share of weights kept); smallest {density.min():.4f} "
        f"in {density.idxmin()}"
    )
    emptied = density[density == 0.0]
    print(
        "layers emptied (layer collapse): " + (", ".join(emptied.index) if len(emptied) else "none")
    )
    if args.verbose:
        print()
        print(density.to_frame("density").to_markdown(floatfmt=".4f"))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    print("methods:")
    for name in baselines.list_methods():
        cls = baselines.get_method_class(name)
        needs = ", ".join(sorted(cls.needs)) or "nothing"
        print(
            f"  {name:<10} {cls.summary}  [needs {needs}; updates weights: {cls.updates_weights}]"
        )
        if args.verbose:
            for line in describe_config(cls.Config):
                print(f"      --set {name}.{line}")
    print("repairs:")
    for name, recipe in REPAIRS.items():
        print(f"  {name:<10} {recipe.summary if recipe else 'no repair'}")
    print("models:")
    for name, entry in MODELS.items():
        ckpts = ", ".join(f"{c.name} ({c.file})" for c in entry.checkpoints)
        print(f"  {name:<17} {entry.family:<9} checkpoints: {ckpts}")
    print("datasets:\n  " + ", ".join(list_datasets()))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from reflow.sweep import load_sweep, run_sweep

    experiments = load_sweep(args.config)
    total = sum(e.size() for e in experiments)
    print(f"{len(experiments)} experiments, {total} rows into {args.out}")
    if args.dry_run:
        for e in experiments:
            print(f"  {e.name}: {e.size()} rows")
        return 0
    start, store = time.perf_counter(), ResultStore(args.out)
    counts = run_sweep(
        experiments, store, pick_device(args.device), args.data_root, progress=not args.no_progress
    )
    return _summarise(counts, start, store)


def _cmd_plot(args: argparse.Namespace) -> int:
    from reflow.plots import plot_all

    store = ResultStore(args.folder, create=False)
    written = plot_all(store.read(), store.read("probes"), args.out, args.only)
    for name, paths in written.items():
        print(f"{name:<20} " + (", ".join(map(str, paths)) if paths else "skipped: no rows for it"))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from reflow.report import write_report

    print(f"wrote {write_report(args.folder, args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reflow",
        description="One-shot pruning benchmark with REFLOW BatchNorm recalibration.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)

    p = sub.add_parser("table", help="Table 1 layout: sparsity rows × method columns, best in bold")
    _add_filters(p)
    p.add_argument("--format", default="markdown", choices=FORMATS)
    p.add_argument("--metric", default="top1", help="column to tabulate (top1, top5, loss, ...)")
    p.add_argument("--digits", type=int, default=2)
    p.set_defaults(func=_cmd_table)

    p = sub.add_parser("collapse", help="layer-wise BN variance ratios and per-layer densities")
    _add_filters(p)
    p.add_argument("--sparsity", type=float, required=True)
    p.add_argument("--seed", type=_csv(int), default=None)
    p.add_argument("--verbose", "-v", action="store_true", help="print every layer's density")
    p.set_defaults(func=_cmd_collapse)

    p = sub.add_parser(
        "sweep",
        help="run the grids declared in a TOML file (resumable)",
        description="Run every [[experiment]] of CONFIG into one results folder.",
    )
    p.add_argument("config", type=Path, help="sweep file, e.g. configs/paper/table1.toml")
    p.add_argument("--out", type=Path, required=True, help="results folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--dry-run", action="store_true", help="count rows and stop")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_sweep)

    from reflow.plots import FIGURES

    p = sub.add_parser("plot", help="draw the paper figures from a results folder (PNG + PDF)")
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path, default=Path("figures"))
    p.add_argument("--only", nargs="+", choices=list(FIGURES), default=None)
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("report", help="Markdown reproduction report with claims and figures")
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path, default=Path("report/report.md"))
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("list", help="methods, repairs, models and datasets")
    p.add_argument("--verbose", "-v", action="store_true", help="show method options")
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    pd.set_option("display.width", 200)
    try:
        return args.func(args)
    except ReflowError as exc:
        print(f"reflow: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `reflow table ... | head`
        return 0
    except KeyboardInterrupt:
        print(
            "\nreflow: interrupted; finished rows are saved, run the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
