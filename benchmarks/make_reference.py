"""Regenerate the recorded references that the accuracy gates compare against.

    REFLOW_HOME=../shared python benchmarks/make_reference.py [--model resnet20] [--runs DIR]
        [--methods mfac,obc]

One reference per model on cifar10-jpeg (`REFERENCES`): ResNet-20 holds every registered method
× {none, reflow} × sparsity 0.4–0.9 at default settings; MobileNetV1 holds the rows of
configs/paper/mobilenet.toml's table experiments (the options stated there) for every registered
method. Beside each, MODEL-augmented holds the REFLOW rows of the report's claims calibrated on
augmented train images (the `*-augmented-calibration` experiments of the paper configs), and
resnet20-seeds Table 1's eight methods with seeds 0-2 (configs/paper/table1_seeds.toml),
mobilenet_v1-seeds four MobileNet methods with seeds 0-2 (configs/paper/mobilenet_seeds.toml). The
script runs the rows not already in --runs (resumable) and writes the columns the gates need to
benchmarks/reference/MODEL_DATASET[_READING].csv, and the rows' per-layer variance ratios (the
collapse evidence) to MODEL_DATASET[_READING]_probes.csv beside it. --methods recomputes only
those methods' rows and keeps every other row of the committed files (a method whose code or
numbers moved need not rerun the rest). Commit the files with the change that moved the numbers,
and say why in the commit message.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from reflow.baselines import list_methods

from reflow.errors import ReflowError
from reflow.execute import ExecEnv
from reflow.grid import Experiment, Grid
from reflow.plan import planned_rows
from reflow.provenance import git_commit
from reflow.results import ResultStore, write_csv_atomic
from reflow.runner import run_experiments
from reflow.settings import Settings
from reflow.sweep import load_sweep

HERE = Path(__file__).resolve().parent
SWEEPS = HERE.parent / "configs" / "paper"
SPARSITIES = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
REPAIRS = ("none", "reflow")
COLUMNS = [
    "model",
    "checkpoint",
    "dataset",
    "method",
    "repair",
    "sparsity",
    "seed",
    "config_hash",
    "top1",
    "top5",
    "dense_top1",
    "sparsity_achieved",
    "min_layer_density",
    "top_class_share",
    "hamming_vs_mp",
    "seed_copy_of",
    "t_select",
    "t_repair",
    "t_evaluate",
    "device",
    "torch",
    "git_commit",
    "config",
]
#: A probe row: its result's key within the reference (model, checkpoint and dataset are the
#: file's), then one normalisation layer's output variance before and after pruning (the collapse
#: evidence of the variance claims and plots), to 6 significant digits (the gate's tolerance is 2%).
PROBE_KEY = ["method", "repair", "sparsity", "seed", "config_hash", "norm_index"]
PROBE_COLUMNS = [*PROBE_KEY, "layer", "norm_type", "var_dense", "var_pruned", "ratio"]
PROBE_VALUES = ["var_dense", "var_pruned", "ratio"]


#: Registered methods the references do not hold yet, and why: the gates expect every other one.
NOT_YET_RECORDED = {
    "alps": "added after the references were recorded; its rows need a CPU run of the reference "
    "grid (`python benchmarks/make_reference.py` on a committed tree); checked against its "
    "reference solver and closed forms in tests/test_alps.py meanwhile",
    "alps_s": "as alps (one family search)",
    "osscar": "added after the references were recorded (as alps); checked against its reference "
    "solver and brute force in tests/test_osscar.py and gated in test_frontier_gates.py",
    "snows": "added after the references were recorded (as alps); its reference-default rows are "
    "GPU work (configs/paper/frontier.toml); checked against closed forms in tests/test_snows.py "
    "and gated in test_frontier_gates.py",
}


def recorded_methods() -> tuple[str, ...]:
    """Every registered method but those `NOT_YET_RECORDED`."""
    return tuple(m for m in list_methods() if m not in NOT_YET_RECORDED)


def reference_grid(
    methods: tuple[str, ...] | None = None, sparsities: tuple[float, ...] = SPARSITIES
) -> Grid:
    return Grid(
        ("resnet20",),
        ("cifar10-jpeg",),
        methods or recorded_methods(),
        REPAIRS,
        sparsities,
        (0,),
    )


def resnet20_experiments() -> list[Experiment]:
    return [Experiment("reference", reference_grid(), (Settings(),))]


def sweep_experiments(sweep: str, *names: str) -> Callable[[], list[Experiment]]:
    """The named experiments of configs/paper/SWEEP."""
    return lambda: [e for e in load_sweep(SWEEPS / sweep) if e.name in names]


mobilenet_experiments = sweep_experiments("mobilenet.toml", "mobilenet-table", "mobilenet-obc")


@dataclass(frozen=True)
class Reference:
    """A model's recorded rows, and the part of them the gates run by default (CI)."""

    model: str
    sweep: Callable[[], list[Experiment]]
    ci_sparsities: tuple[float, ...]
    #: Methods the gates run by default; None: every method of the reference.
    ci_methods: tuple[str, ...] | None = None
    #: Methods recorded; None: every registered method (the registry gate then checks it).
    methods: tuple[str, ...] | None = None
    dataset: str = "cifar10-jpeg"
    #: What sets these rows apart from the model's main reference ("" for that one), e.g.
    #: ``augmented`` for REFLOW calibrated on augmented images: the file name's suffix.
    reading: str = ""

    def experiments(self) -> list[Experiment]:
        return cut(self.sweep(), SPARSITIES, self.methods or recorded_methods())

    @property
    def path(self) -> Path:
        suffix = f"_{self.reading}" if self.reading else ""
        return HERE / "reference" / f"{self.model}_{self.dataset.replace('-', '')}{suffix}.csv"

    @property
    def probes_path(self) -> Path:
        """The probe rows of the reference's rows, beside it (..._probes.csv)."""
        return self.path.with_name(f"{self.path.stem}_probes.csv")

    def read(self) -> pd.DataFrame:
        return pd.read_csv(self.path, dtype={"config_hash": str})

    def read_probes(self) -> pd.DataFrame:
        """The recorded probe rows; empty where the reference was made before they were kept."""
        if not self.probes_path.exists():
            return pd.DataFrame(columns=PROBE_COLUMNS)
        return pd.read_csv(self.probes_path, dtype={"config_hash": str})

    def subset(
        self, sparsities: tuple[float, ...], methods: tuple[str, ...] | None
    ) -> list[Experiment]:
        """The reference's experiments cut to these sparsities and methods (None: all)."""
        return cut(self.experiments(), sparsities, methods)


def cut(
    experiments: list[Experiment], sparsities: tuple[float, ...], methods: tuple[str, ...] | None
) -> list[Experiment]:
    """``experiments`` with only these sparsities and methods (None: all); options for methods
    cut away are dropped with them (a sweep refuses options for a method it does not run)."""
    out = []
    for experiment in experiments:
        grid = experiment.grid
        kept = dataclasses.replace(
            grid,
            methods=tuple(m for m in grid.methods if methods is None or m in methods),
            sparsities=tuple(s for s in grid.sparsities if s in sparsities),
        )
        if kept.methods and kept.sparsities:
            named = set(kept.methods) | set(kept.repairs)
            settings = tuple(
                dataclasses.replace(s, options={k: v for k, v in s.options.items() if k in named})
                for s in experiment.settings
            )
            out.append(dataclasses.replace(experiment, grid=kept, settings=settings))
    return out


REFERENCES = {
    "resnet20": Reference("resnet20", resnet20_experiments, ci_sparsities=(0.7,)),
    # One sparsity of the cheap methods in CI (a MobileNet row costs ~1 min on a 2-core CPU);
    # REFLOW_GATE_METHODS=all and REFLOW_GATE_SPARSITIES=all run every recorded row.
    "mobilenet_v1": Reference(
        "mobilenet_v1",
        mobilenet_experiments,
        ci_sparsities=(0.8,),
        ci_methods=("mp", "mp_layer", "wanda", "l1_channel"),
    ),
    # The claims' REFLOW rows calibrated on augmented train images (the paper's most likely
    # reading of "training batches"; reflow-bench issue 22), so `reflow report` can decide each
    # claim under both readings from committed evidence.
    "resnet20-augmented": Reference(
        "resnet20",
        sweep_experiments(
            "table1.toml", "table1-augmented-calibration", "table1-augmented-calibration-chita"
        ),
        ci_sparsities=(0.7,),
        ci_methods=("mp",),
        methods=("mp", "chita_s", "chita_u"),
        reading="augmented",
    ),
    "mobilenet_v1-augmented": Reference(
        "mobilenet_v1",
        sweep_experiments("mobilenet.toml", "mobilenet-augmented-calibration"),
        ci_sparsities=(0.8,),
        ci_methods=("mp",),
        methods=("mp",),
        reading="augmented",
    ),
    # Table 1's eight methods with seeds 0, 1 and 2 (configs/paper/table1_seeds.toml; reflow-bench
    # issue 21): the spread every `reflow table` cell and `reflow report` interval rests on. Its
    # seed-0 rows are the main reference's; CI reruns MP at 0.7 for each seed.
    "resnet20-seeds": Reference(
        "resnet20",
        sweep_experiments("table1_seeds.toml", "table1-seeds"),
        ci_sparsities=(0.7,),
        ci_methods=("mp",),
        methods=("mp", "wf_u", "mp_u", "mfac", "chita_u", "cbs_u", "obc", "sparsegpt"),
        reading="seeds",
    ),
    # The MobileNet rows whose verdicts turn on small gaps, with seeds 0, 1 and 2
    # (configs/paper/mobilenet_seeds.toml): its seed-0 rows are the MobileNet reference's. M-FAC,
    # the config's fifth method (the benchmark's own comparison, not the paper's), is not recorded
    # yet: its three seeds cost about an hour of the 2-core CPU beyond the others' 93 minutes.
    "mobilenet_v1-seeds": Reference(
        "mobilenet_v1",
        sweep_experiments("mobilenet_seeds.toml", "mobilenet-seeds"),
        ci_sparsities=(0.8,),
        ci_methods=("mp",),
        methods=("mp", "mp_u", "cbs_u", "chita_u"),
        reading="seeds",
    ),
}


def make_reference(
    reference: Reference,
    runs: Path,
    device: str = "auto",
    methods: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """Run the reference's missing rows into ``runs`` and write its CSV (refused from a tree
    with uncommitted changes, or with rows that such a tree computed: a reference must say
    which committed code made it). With ``methods``, only their rows are (re)computed and the
    committed file's other rows are kept as they are."""
    commit = git_commit()
    if commit.endswith("+dirty") or commit == "unknown":
        raise ReflowError(
            f"the checkout is {commit}: commit (or stash) your changes first, so every reference "
            "row names the code that computed it"
        )
    methods = methods or None  # an empty list names no refresh: the whole reference
    kept, kept_probes = pd.DataFrame(columns=COLUMNS), pd.DataFrame(columns=PROBE_COLUMNS)
    if methods:
        held = set(reference.methods or recorded_methods())
        unknown = sorted(set(methods) - held)
        if unknown:
            raise ReflowError(
                f"--methods {', '.join(unknown)}: not in the {reference.model} reference "
                f"{reference.reading or 'main'} (it holds {', '.join(sorted(held))})"
            )
        if not reference.path.exists():
            raise ReflowError(
                f"--methods refreshes rows of {reference.path}, which does not exist yet: "
                "make the whole reference first (leave out --methods)"
            )
        kept, kept_probes = reference.read(), reference.read_probes()
        kept = kept[~kept.method.isin(methods)]
        kept_probes = kept_probes[~kept_probes.method.isin(methods)]
    experiments = reference.subset(SPARSITIES, methods)
    store = ResultStore(runs)
    run_experiments(experiments, store, env=ExecEnv(device, progress=True))
    frame = store.read()
    frame = planned_rows(frame[frame.error.isna()], experiments)
    dirty = frame[frame.git_commit.str.endswith("+dirty") | (frame.git_commit == "unknown")]
    if len(dirty):
        raise ReflowError(
            f"{len(dirty)} rows in {runs} were computed from uncommitted code "
            f"({dirty.git_commit.iloc[0]}); use a new --runs folder to compute them again"
        )
    probes = store.read("probes")
    probes = probes[probes.run_id.isin(frame.run_id)].reindex(columns=PROBE_COLUMNS)
    probes[PROBE_VALUES] = probes[PROBE_VALUES].apply(lambda c: c.map(lambda v: float(f"{v:.6g}")))
    # Refreshed rows take the committed file's columns, so only those rows change in its diff.
    order = ["method", "repair", "sparsity", "seed"]
    frame = combine(kept, frame.reindex(columns=kept.columns), order)
    probes = combine(kept_probes, probes, PROBE_KEY)
    reference.path.parent.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(frame, reference.path)
    # A refresh of a reference made before probes were kept would write a file holding only
    # the refreshed methods' probes: the gates would take the others' absence for a regression.
    if len(probes) and (not methods or reference.probes_path.exists()):
        write_csv_atomic(probes, reference.probes_path)
    return frame


def combine(kept: pd.DataFrame, new: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """The kept rows of a committed file and the (re)computed ones, in the file's order."""
    frame = pd.concat([kept, new], ignore_index=True) if len(kept) else new
    return frame.sort_values(order)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        choices=sorted(REFERENCES),
        action="append",
        help="a reference (a model, or MODEL-augmented for its augmented-calibration rows); "
        "default: every one",
    )
    parser.add_argument("--runs", type=Path, default=Path("runs/reference"), help="results folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--methods",
        type=lambda text: tuple(m.strip() for m in text.split(",") if m.strip()),
        help="comma list: recompute only these methods' rows, keep the file's others",
    )
    args = parser.parse_args()
    for name in args.model or sorted(REFERENCES):
        reference = REFERENCES[name]
        frame = make_reference(reference, args.runs, args.device, args.methods)
        print(f"wrote {len(frame)} rows to {reference.path}")


if __name__ == "__main__":
    main()
