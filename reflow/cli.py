"""The ``reflow`` command line: run, sweep, prune, table, collapse, plot, report, export, merge,
list."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from reflow import __version__
from reflow.errors import ReflowError
from reflow.execute import ExecEnv
from reflow.executors import EXECUTORS, Executor, get_executor
from reflow.grid import Experiment, Grid, check_seed
from reflow.masks import Pattern
from reflow.paths import check_output
from reflow.results import ResultStore
from reflow.runner import MAX_ROWS, check_run, run_experiments
from reflow.settings import Settings, setting_fields
from reflow.tables import FORMATS, LAYOUTS, STATS, table_for

RESUME = "interrupted; finished rows are saved, run the same command to resume"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Option defaults in --help (only where there is one), example epilogs printed as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if isinstance(default, tuple):
            default = ",".join(str(part) for part in default if part is not None)
        shown = default not in (None, False, [], "", argparse.SUPPRESS)
        if not shown or "default" in (action.help or ""):
            return action.help
        return f"{action.help} (default: {default})"


EPILOG = """examples:
  REFLOW_HOME=../shared reflow run --model resnet20 --dataset cifar10-jpeg \\
      --method mp,random --repair none,reflow --sparsity 0.4,0.5,0.6,0.7,0.8,0.9 --out runs/table1
  reflow sweep configs/paper/table1.toml --out runs/paper --executor dask --workers 2
  reflow prune --model resnet20 --dataset cifar10-jpeg --method mp --sparsity 0.8 \\
      --repair reflow --save pruned.pt
  reflow table runs/table1 --format markdown        # --layout paper: MP | WF | CBS | CHITA | REFLOW
  reflow collapse runs/table1 --model resnet20 --method mp --sparsity 0.9
  reflow list --verbose
"""


def _csv(cast: Callable[[str], object]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            return tuple(cast(part.strip()) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"cannot parse {text!r}: {exc}") from exc

    return parse


def parse_options(pairs: Sequence[str]) -> dict[str, dict[str, str]]:
    """``NAME.OPTION=VALUE`` pairs (NAME a method or a repair) as nested dicts."""
    options: dict[str, dict[str, str]] = {}
    for pair in pairs:
        target, eq, value = pair.partition("=")
        name, dot, key = target.partition(".")
        if not (eq and dot and name and key):
            raise ReflowError(
                f"--set takes NAME.OPTION=VALUE for a method or repair (e.g. "
                f"mp_mt.min_density=0.01), got {pair!r}"
            )
        options.setdefault(name, {})[key] = value
    return options


def _key_values(pairs: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not (eq and key):
            raise ReflowError(f"{flag} takes OPTION=VALUE, got {pair!r}")
        out[key] = value
    return out


def _add_execution(p: argparse.ArgumentParser) -> None:
    """Flags shared by run and sweep: device, data, executor, plugins, progress."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (in each worker)")
    p.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="folder with the dataset folders (default: $REFLOW_HOME/data)",
    )
    p.add_argument(
        "--executor",
        default="serial",
        choices=EXECUTORS.names(),
        help="where tasks run: serial (this process), dask (Dask distributed), submitit (SLURM)",
    )
    p.add_argument("--workers", type=int, help="dask: worker processes of a local cluster")
    p.add_argument("--threads", type=int, help="torch threads per worker (serial: in this process)")
    p.add_argument("--gpus", help="dask: comma list of GPU ids, one worker pinned to each")
    p.add_argument("--scheduler", help="dask: address of an existing cluster's scheduler")
    p.add_argument(
        "--executor-set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="any other executor option; see `reflow list --verbose`",
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (in every worker) first, e.g. one registering your own method",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--yes",
        action="store_true",
        help=f"run a grid of more than {MAX_ROWS:,} rows (refused without it)",
    )
    p.set_defaults(interrupt=RESUME)


def _executor(args: argparse.Namespace, out: Path) -> Executor:
    options = _key_values(args.executor_set, "--executor-set")
    for flag in ("workers", "threads", "gpus", "scheduler"):
        value = getattr(args, flag)
        if value is not None:
            options[flag] = str(value)
    if args.executor == "submitit":
        options.setdefault("folder", str(out / "submitit"))
    return get_executor(args.executor, options)


def _env(args: argparse.Namespace) -> ExecEnv:
    return ExecEnv(
        args.device,
        str(args.data_root) if args.data_root else None,
        not args.no_progress,
        tuple(args.plugin),
    )


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="prune, repair and evaluate a grid; rows into OUT/results.sqlite",
        description="Run every (model, checkpoint, dataset, method, repair, sparsity, seed) row "
        "not already in OUT. Safe to interrupt: finished rows are kept, rerunning resumes.",
        epilog="examples:\n"
        "  reflow run --model resnet20 --dataset cifar10-jpeg --method mp,chita_u \\\n"
        "      --repair none,reflow --sparsity 0.7,0.8,0.9 --out runs/x\n"
        "  reflow run --model resnet20 --dataset cifar10-jpeg --method cbs_u --scope blocks \\\n"
        "      --set cbs_u.num_grads=500 --sparsity 0.8 --out runs/x\n"
        "  reflow run --model resnet20 --dataset cifar10-jpeg --method mp,wf_u --pattern 2:4 \\\n"
        "      --repair none,reflow,statcorr --out runs/x --executor dask --workers 2",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", type=_csv(str), required=True, help="comma list; see `reflow list`")
    p.add_argument("--dataset", type=_csv(str), required=True, help="comma list; see `reflow list`")
    p.add_argument("--method", type=_csv(str), default=("mp",), help="comma list of methods")
    p.add_argument(
        "--repair", type=_csv(str), default=("none", "reflow"), help="comma list of repairs"
    )
    p.add_argument(
        "--sparsity",
        type=_csv(float),
        default=None,
        help="comma list in [0, 1); implied by --pattern",
    )
    p.add_argument("--seed", type=_csv(int), default=(0,), help="comma list of seeds")
    p.add_argument(
        "--checkpoint",
        type=_csv(str),
        default=(None,),
        help="zoo checkpoint name(s), file path(s) or 'none'; default: the one recorded "
        "best on the dataset",
    )
    p.add_argument("--out", type=Path, required=True, help="results folder")
    _add_settings(p)
    _add_execution(p)
    p.set_defaults(func=_cmd_run)


def _add_settings(p: argparse.ArgumentParser) -> None:
    """The harness settings, one flag per declared `reflow.settings.Settings` field (its help,
    choices and default), shared by run and prune; plus ``--set`` for method and repair
    options."""
    for f in setting_fields():
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        if isinstance(f.default, bool):
            p.add_argument(flag, action="store_true", help=meta["help"])
        else:
            p.add_argument(
                flag,
                type=type(f.default),
                default=f.default,
                choices=meta.get("choices"),
                metavar={"pattern": "N:M", "recalibrate_layers": "all|first:K|last:K"}.get(
                    f.name, "N" if isinstance(f.default, int) else None
                ),
                help=meta["help"],
            )
    p.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="NAME.OPT=VALUE",
        help="method or repair option, repeatable; see `reflow list --verbose`",
    )


def _settings(args: argparse.Namespace) -> Settings:
    values = {f.name: getattr(args, f.name) for f in setting_fields()}
    return Settings(**values, options=parse_options(args.options))


def _sparsities(args: argparse.Namespace, settings: Settings) -> tuple[float, ...]:
    """``--sparsity``, or the one a ``--pattern`` implies (a conflict is reported by the plan)."""
    if args.sparsity:
        return args.sparsity
    if settings.pattern:
        return (Pattern.parse(settings.pattern).sparsity,)
    raise ReflowError("--sparsity is required (or --pattern N:M, which implies it)")


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    grid = Grid(
        args.model,
        args.dataset,
        args.method,
        args.repair,
        _sparsities(args, settings),
        args.seed,
        args.checkpoint,
    )
    experiments = [Experiment("run", grid, (settings,))]
    return _run(experiments, args)


def _run(experiments: list[Experiment], args: argparse.Namespace) -> int:
    """Check everything once, then open the store and run: bad input writes nothing."""
    env, executor = _env(args), _executor(args, args.out)
    check_run(experiments, env, executor, yes=args.yes)
    start, store = time.perf_counter(), ResultStore(args.out)
    counts = run_experiments(
        experiments, store, executor, env, progress=not args.no_progress, checked=True
    )
    return _summarise(counts, start, store)


def _summarise(counts: dict[str, int], start: float, store: ResultStore) -> int:
    """Print what a run or sweep did; exit status 1 when any row ended in an error."""
    shared = f", {counts['duplicates']} declared twice" if counts.get("duplicates") else ""
    if counts.get("by_others"):
        shared += f", {counts['by_others']} computed by another driver on this folder"
    print(
        f"{counts['ran']} rows run ({counts['errors']} with errors), {counts['done_before']} "
        f"already done{shared}, in {time.perf_counter() - start:.1f} s; results in "
        f"{store.folder / 'results.sqlite'} (CSV exports beside it)"
    )
    return 1 if counts["errors"] else 0


def _add_prune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="prune one model, repair it, save its weights with a JSON card",
        description="Prune a zoo model in one shot, repair it and save the state dict (masks "
        "applied; loadable with torch.load(weights_only=True)) and a card beside it: model, "
        "checkpoint sha256, method and options, sparsity achieved, repair and calibration "
        "samples, dense and pruned top-1, commit, torch version.",
        epilog="examples:\n"
        "  reflow prune --model resnet20 --dataset cifar10-jpeg --method mp --sparsity 0.8 \\\n"
        "      --repair reflow --save pruned.pt --save-masks\n"
        "  reflow prune --model resnet20 --dataset cifar10-jpeg --method obc --pattern 2:4 \\\n"
        "      --repair statcorr --save obc-24.pt\n"
        "  reflow prune --model mobilenet_v1 --dataset cifar10-jpeg --method l1_channel \\\n"
        "      --sparsity 0.5 --repair reflow --save smaller.pt",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", required=True, help="zoo model; see `reflow list`")
    p.add_argument("--dataset", required=True, help="its dataset (calibration and test split)")
    p.add_argument("--checkpoint", default=None, help="zoo checkpoint, file path or 'none'")
    p.add_argument("--method", default="mp")
    p.add_argument("--sparsity", type=float, default=None, help="in [0, 1); implied by --pattern")
    p.add_argument("--repair", default="reflow")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", type=Path, required=True, help="state dict path, e.g. pruned.pt")
    p.add_argument("--save-masks", action="store_true", help="also write PATH.masks.pt")
    p.add_argument(
        "--force", action="store_true", help="replace existing files at --save (and its card)"
    )
    p.add_argument("--no-eval", action="store_true", help="skip the dense and pruned top-1")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", type=Path, default=None)
    _add_settings(p)
    p.set_defaults(
        func=_cmd_prune,
        interrupt="interrupted; no file was written (prune writes its files at the end, together)",
    )


def _cmd_prune(args: argparse.Namespace) -> int:
    from reflow.prune_command import prune_and_save

    settings = _settings(args)
    sparsity = args.sparsity
    if sparsity is None and settings.pattern:
        sparsity = Pattern.parse(settings.pattern).sparsity
    if sparsity is None:
        raise ReflowError("--sparsity is required (or --pattern N:M, which implies it)")
    check_seed(args.seed)
    card = prune_and_save(
        args.model,
        args.dataset,
        args.checkpoint,
        args.method,
        sparsity,
        args.repair,
        settings,
        args.seed,
        args.save,
        save_masks=args.save_masks,
        evaluate=not args.no_eval,
        device=args.device,
        data_root=args.data_root,
        force=args.force,
    )
    top1 = (
        f"; top-1 {card['dense_top1']:.2f} dense → {card['top1']:.2f}"
        if card.get("top1") is not None
        else ""
    )
    print(
        f"{args.method}+{args.repair} at sparsity {card['sparsity_achieved']:.4f} of "
        f"{card['prunable_params']:,} prunable weights{top1}; wrote " + ", ".join(card["written"])
    )
    return 0


def _add_filters(p: argparse.ArgumentParser, methods: bool = True) -> None:
    p.add_argument("folder", type=Path, help="results folder written by `reflow run`")
    p.add_argument("--model", default=None, help="only rows of this model (default: all)")
    p.add_argument("--dataset", default=None, help="only rows of this dataset (default: all)")
    p.add_argument("--checkpoint", default=None, help="only rows of this checkpoint")
    if methods:
        p.add_argument("--method", type=_csv(str), default=None, help="comma list of methods")
        p.add_argument("--repair", type=_csv(str), default=None, help="comma list of repairs")


def _cmd_table(args: argparse.Namespace) -> int:
    store = ResultStore(args.folder, readonly=True)
    frame = store.read()
    metrics = sorted(
        c
        for c in frame.columns
        if pd.api.types.is_numeric_dtype(frame[c]) and c not in {"seed", "sparsity"}
    )
    if args.metric not in metrics:
        raise ReflowError(
            f"unknown --metric {args.metric!r}; numeric columns of this store: "
            + ", ".join(metrics)
        )
    for title, text in table_for(
        frame,
        layout=args.layout,
        fmt=args.format,
        metric=args.metric,
        digits=args.digits,
        by_repair=args.by_repair,
        outcomes=store.outcomes(),
        stat=args.stat,
        model=args.model,
        dataset=args.dataset,
        checkpoint=args.checkpoint,
        method=args.method,
        repair=args.repair,
    ):
        if title:
            print(f"\n{title}\n")
        print(text)
    return 0


def _cmd_collapse(args: argparse.Namespace) -> int:
    from reflow.tables import collapse_tables

    store = ResultStore(args.folder, readonly=True)
    filters = {k: getattr(args, k) for k in ("model", "dataset", "checkpoint", "method")}
    filters |= {"sparsity": args.sparsity, "seed": args.seed}
    ratios, density = collapse_tables(
        store.read("probes"), store.read("layers"), repair=args.repair, **filters
    )
    print(
        "output variance ratio var_pruned/var_dense per normalisation layer "
        "(1 = no collapse), mean over seeds\n"
    )
    print(ratios.to_markdown(floatfmt=".4f"))
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


def _cmd_compare(args: argparse.Namespace) -> int:
    from reflow.tables import comparison_lines

    store = ResultStore(args.folder, readonly=True)
    lines = comparison_lines(
        store.read(),
        store.outcomes(),
        args.a,
        args.b,
        args.sparsity,
        model=args.model,
        dataset=args.dataset,
        checkpoint=args.checkpoint,
    )
    print("\n".join(lines))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from reflow.listing import registered

    print("\n".join(registered(args.verbose)))
    return 0


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run the grids declared in a TOML file (resumable)",
        description="Run every [[experiment]] of CONFIG into one results folder. Rows shared by "
        "several experiments run once; an interrupted sweep resumes where it stopped.",
        epilog="examples:\n"
        "  reflow sweep configs/paper/table1.toml --out runs/paper --dry-run\n"
        "  reflow sweep configs/paper/table1.toml --out runs/paper\n"
        "  reflow sweep configs/paper/table1.toml --out runs/paper --executor dask --workers 2\n"
        "  reflow sweep configs/paper/table1.toml --out runs/paper --executor dask --gpus 0,1\n"
        "  reflow sweep configs/paper/table1.toml --out runs/paper --executor submitit \\\n"
        "      --executor-set partition=gpu --executor-set gpus=1",
        formatter_class=HelpFormatter,
    )
    p.add_argument("config", type=Path, help="sweep file, e.g. configs/paper/table1.toml")
    p.add_argument("--out", type=Path, required=True, help="results folder")
    p.add_argument("--dry-run", action="store_true", help="count rows and stop")
    _add_execution(p)
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from reflow.sweep import load_sweep

    experiments = load_sweep(args.config)
    total = sum(e.size() for e in experiments)
    print(f"{len(experiments)} experiments, {total} rows into {args.out}")
    if args.dry_run:
        for e in experiments:
            print(f"  {e.name}: {e.size()} rows")
        return 0
    return _run(experiments, args)


def _cmd_plot(args: argparse.Namespace) -> int:
    from reflow.plots import plot_all

    check_output(args.out, "--out", folder=True)
    store = ResultStore(args.folder, readonly=True)
    written = plot_all(store.read(), store.read("probes"), args.out, args.only)
    for name, paths in written.items():
        print(f"{name:<20} " + (", ".join(map(str, paths)) if paths else "skipped: no rows for it"))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from reflow.report import write_report

    print(f"wrote {write_report(args.folder, args.out)}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    if args.to is not None:
        check_output(args.to, "--to", folder=True)
    store = ResultStore(args.folder, readonly=args.to is not None)
    for path in store.export(args.format, args.to, predictions=args.predictions):
        print(f"wrote {path}")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from reflow.executors.shards import merge_shards, read_shards

    folder = args.shards or args.folder / "submitit" / "shards"
    shards = read_shards(folder)  # every shard read and checked before the store is touched
    store = ResultStore(args.folder)
    added, skipped = merge_shards(store, folder, shards)
    store.export("csv")
    print(f"merged {added} rows ({skipped} already in the store) into {store.folder}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reflow",
        description="One-shot pruning benchmark with REFLOW BatchNorm recalibration.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__} (reflow-bench)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_sweep(sub)
    _add_prune(sub)

    p = sub.add_parser(
        "table",
        help="Table 1 layout: sparsity rows × method columns, best in bold",
        description="Tabulate a results folder: one table per model, checkpoint and dataset "
        "(per repair with --by-repair), mean ± std over seeds (n), or each cell's 95% interval "
        "(--stat ci: a two-level bootstrap over seeds and test examples). Bold marks the best "
        "cell of each row and every cell not significantly worse than it (exact McNemar on the "
        "stored per-example outcomes, paired by seed, Holm-corrected across the table). Rows "
        "of different configurations are never averaged together.",
        epilog="examples:\n"
        "  reflow table runs/table1\n"
        "  reflow table runs/table1 --stat ci\n"
        "  reflow table runs/table1 --layout paper --format latex > table1.tex\n"
        "  reflow table runs/paper --model mobilenet_v1 --by-repair --metric top5\n"
        "  reflow table runs/paper --method mp,chita_u --repair none,reflow --format csv",
        formatter_class=HelpFormatter,
    )
    _add_filters(p)
    p.add_argument("--format", default="markdown", choices=FORMATS)
    p.add_argument(
        "--layout",
        default="methods",
        choices=list(LAYOUTS),
        help="; ".join(f"{k}: {v}" for k, v in LAYOUTS.items()),
    )
    p.add_argument("--metric", default="top1", help="column to tabulate (top1, top5, loss, ...)")
    p.add_argument("--digits", type=int, default=2, help="decimals shown")
    p.add_argument(
        "--stat",
        default="std",
        choices=list(STATS),
        help="; ".join(f"{k}: {v}" for k, v in STATS.items()).replace("%", "%%"),
    )
    p.add_argument(
        "--by-repair", action="store_true", help="one table per repair, methods as columns"
    )
    p.set_defaults(func=_cmd_table)

    p = sub.add_parser(
        "collapse",
        help="layer-wise variance ratios and per-layer densities",
        description="Signal collapse, layer by layer: the output variance of every "
        "normalisation layer of the pruned network over the dense one's (1 = no collapse), per "
        "repair, and the share of weights each prunable layer kept.",
        epilog="examples:\n"
        "  reflow collapse runs/table1 --model resnet20 --method mp --sparsity 0.9\n"
        "  reflow collapse runs/paper --model mobilenet_v1 --method mp --sparsity 0.8 -v",
        formatter_class=HelpFormatter,
    )
    _add_filters(p)
    p.add_argument("--sparsity", type=float, required=True, help="the rows' target sparsity")
    p.add_argument("--seed", type=_csv(int), default=None, help="comma list (default: all)")
    p.add_argument("--verbose", "-v", action="store_true", help="print every layer's density")
    p.set_defaults(func=_cmd_collapse)

    p = sub.add_parser(
        "compare",
        help="paired difference of two columns per sparsity, with interval and p-value",
        description="Compare two method+repair columns of a results folder on the same test "
        "examples: per sparsity, the mean top-1 difference A - B with its 95% interval (two-"
        "level bootstrap: seeds, then test examples, paired), and the exact McNemar test on "
        "discordant examples summed over common seeds, Holm-corrected across the sparsities. "
        "Columns are labelled as `reflow table` labels them (method, or method+repair).",
        epilog="examples:\n"
        "  reflow compare runs/table1 mp+reflow chita_u\n"
        "  reflow compare runs/table1 mp+reflow mp+statcorr --sparsity 0.8,0.9",
        formatter_class=HelpFormatter,
    )
    _add_filters(p, methods=False)
    p.add_argument("a", help="first column, e.g. mp+reflow")
    p.add_argument("b", help="second column, e.g. chita_u (repair none)")
    p.add_argument("--sparsity", type=_csv(float), default=None, help="comma list (default: all)")
    p.set_defaults(func=_cmd_compare)

    from reflow.plots import FIGURES

    p = sub.add_parser(
        "plot",
        help="draw the paper figures from a results folder (PNG + PDF)",
        description="Draw every figure the stored rows support (variance ratio per layer, "
        "accuracy vs sparsity with 95% bands, mask Hamming distance, prediction histogram, the "
        "calibration ablations, the critical-difference diagram of mean ranks), per model; a "
        "figure without rows is reported as skipped.",
        epilog="examples:\n"
        "  reflow plot runs/paper --out figures\n"
        "  reflow plot runs/paper --out figures --only variance accuracy cd",
        formatter_class=HelpFormatter,
    )
    p.add_argument("folder", type=Path, help="results folder written by `reflow run`")
    p.add_argument("--out", type=Path, default=Path("figures"), help="folder for the figures")
    p.add_argument(
        "--only", nargs="+", choices=list(FIGURES), default=None, help="draw only these figures"
    )
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser(
        "report",
        help="Markdown reproduction report with claims and figures",
        description="Test each claim of the paper on the stored rows (reproduced, not "
        "reproduced or not measured, with the evidence) and write a Markdown report with its "
        "figures beside it.",
        epilog="examples:\n  reflow report runs/paper --out report/report.md",
        formatter_class=HelpFormatter,
    )
    p.add_argument("folder", type=Path, help="results folder written by `reflow run`")
    p.add_argument(
        "--out", type=Path, default=Path("report/report.md"), help="Markdown file to write"
    )
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "export",
        help="write the store's tables as CSV (or parquet) files",
        description="Write the results, probes and layers tables of a results folder as tidy "
        "files (the SQLite store stays the record).",
        epilog="examples:\n"
        "  reflow export runs/paper\n"
        "  reflow export runs/paper --format parquet --to exports/\n"
        "  reflow export runs/paper --predictions   # + predictions.npz (per-example outcomes)",
        formatter_class=HelpFormatter,
    )
    p.add_argument("folder", type=Path)
    p.add_argument(
        "--predictions",
        action="store_true",
        help="also write every row's predicted class per test example (predictions.npz with "
        "csv, predictions.parquet with parquet)",
    )
    p.add_argument("--format", default="csv", choices=["csv", "parquet"])
    p.add_argument("--to", type=Path, default=None, help="target folder (default: FOLDER)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "merge",
        help="fold submitit shard files into the store (after the driver is gone)",
        description="Insert every row of FOLDER/submitit/shards/*.json not already in the store; "
        "safe to repeat. Every shard is read and checked before the store is touched.",
        epilog="examples:\n"
        "  reflow merge runs/paper\n"
        "  reflow merge runs/paper --shards /scratch/me/shards",
        formatter_class=HelpFormatter,
    )
    p.add_argument("folder", type=Path)
    p.add_argument("--shards", type=Path, default=None, help="shard folder, if elsewhere")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser(
        "list",
        help="methods, repairs, executors, models and datasets",
        description="What is registered: methods (what each needs, whether it updates weights), "
        "repairs, executors, models with their checkpoints, datasets; -v adds every option with "
        "its default and help.",
        epilog="examples:\n  reflow list\n  reflow list -v | grep -A8 chita_u",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--verbose", "-v", action="store_true", help="show options")
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
        print(f"\nreflow: {getattr(args, 'interrupt', 'interrupted')}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
