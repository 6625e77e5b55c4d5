"""Paper figures from the stored result tables alone (PNG and PDF).

Every figure uses one colour per method (fixed by registry order) and one line style per repair,
so a method looks the same in every figure. Figures whose rows are absent are skipped with a note.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from reflow.baselines import list_methods
from reflow.errors import ReflowError
from reflow.ranking import rank_methods
from reflow.stats import accuracy_variance
from reflow.tables import DEFAULTS, column_label, expand_config, variant, with_defaults
from reflow.verdicts import examples_of

REPAIR_STYLES = {
    "none": "--",
    "reflow": "-",
    "reflow_mean": (0, (6, 2)),
    "reflow_var": (0, (2, 2)),
    "adabn": ":",
    "bnt": "-.",
    "statcorr": (0, (5, 1, 1, 1, 1, 1)),
    "reflow+statcorr": (0, (1, 1)),
}
plt.rcParams.update(
    {
        "font.size": 11,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "figure.dpi": 110,
        "savefig.bbox": "tight",
        "legend.fontsize": 9,
    }
)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
#: tab20's dark shades first, then its light ones: the first ten methods get strong colours.
_PALETTE = [plt.get_cmap("tab20")(i) for i in (*range(0, 20, 2), *range(1, 20, 2))]


def method_style(method: str) -> dict:
    """The colour and marker of ``method`` in every figure: distinct for every registered
    method (20 colours × 10 markers, by registry order); an unregistered name still gets a
    style that is stable across runs."""
    names = list_methods()
    index = names.index(method) if method in names else len(names) + zlib.crc32(method.encode())
    return {
        "color": _PALETTE[index % len(_PALETTE)],
        "marker": MARKERS[(index + index // len(_PALETTE)) % len(MARKERS)],
    }


def method_colour(method: str) -> tuple[float, ...]:
    return method_style(method)["color"]


def sparsity_colours(sparsities: pd.Series) -> dict[float, tuple[float, ...]]:
    """One colour per sparsity (dark = low, green-yellow = high), the same rule in every figure;
    viridis stops at 0.9 because its pure yellow end fades on white paper."""
    levels = sorted(sparsities.unique())
    cmap = plt.get_cmap("viridis")
    return {s: cmap(0.9 * i / max(1, len(levels) - 1)) for i, s in enumerate(levels)}


def _finish(fig: plt.Figure, ax: plt.Axes, title: str, out: Path, name: str) -> list[Path]:
    ax.set_title(title)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{ext}" for ext in ("png", "pdf")]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths


def _norm_axis(ax: plt.Axes, layers: pd.Series) -> None:
    ax.set_xticks(range(len(layers)), layers, rotation=70, fontsize=7)
    ax.set_xlabel("normalisation layer (input → output)")
    ax.axhline(1.0, color="grey", lw=1)
    ax.set_ylabel("variance ratio pruned / dense")


def _seed_band(ax: plt.Axes, group: pd.DataFrame, colour: object) -> None:
    """Shade the seed spread (min to max over seeds) of a per-layer ratio curve."""
    if "seed" in group and group.seed.nunique() > 1:
        spread = group.groupby("norm_index")["ratio"].agg(["min", "max"])
        ax.fill_between(spread.index, spread["min"], spread["max"], alpha=0.15, color=colour, lw=0)


def variance_by_layer(
    probes: pd.DataFrame, results: pd.DataFrame, out: Path, method: str = "mp", repair: str = "none"
) -> list[Path]:
    """Fig. 4: per-layer variance ratio at several sparsities (mean over seeds; the band is
    their spread)."""
    rows = probes[(probes.method == method) & (probes.repair == repair)]
    if rows.empty:
        return []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for s, colour in sparsity_colours(rows.sparsity).items():
        curve = rows[rows.sparsity == s].groupby("norm_index")["ratio"].mean()
        ax.plot(
            curve.index,
            curve.values,
            marker="o",
            ms=3,
            color=colour,
            label=f"sparsity {s:g}",
        )
        _seed_band(ax, rows[rows.sparsity == s], colour)
    _norm_axis(ax, rows.drop_duplicates("norm_index").sort_values("norm_index")["layer"])
    ax.set_yscale("log")
    ax.legend()
    return _finish(
        fig,
        ax,
        f"{column_label(method, repair)}: variance ratio per normalisation layer",
        out,
        f"fig4_variance_{method}_{repair}",
    )


def _highest_sparsity(rows: pd.DataFrame) -> float:
    return float(rows.sparsity.max()) if len(rows) else 0.0


def variance_by_repair(
    probes: pd.DataFrame,
    results: pd.DataFrame,
    out: Path,
    method: str = "mp",
    sparsity: float | None = None,
) -> list[Path]:
    """Fig. 7: per-layer variance ratio before and after repair (default: highest sparsity)."""
    rows = probes[probes.method == method]
    sparsity = sparsity if sparsity is not None else _highest_sparsity(rows)
    rows = rows[rows.sparsity == sparsity]
    if rows.repair.nunique() < 2:
        return []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for repair, group in rows.groupby("repair"):
        curve = group.groupby("norm_index")["ratio"].mean()
        ax.plot(
            curve.index,
            curve.values,
            linestyle=REPAIR_STYLES.get(repair, "-"),
            ms=3,
            **method_style(method),
            alpha=1.0 if repair in {"none", "reflow"} else 0.6,
            label=column_label(method, repair),
        )
        _seed_band(ax, group, method_colour(method))
    _norm_axis(ax, rows.drop_duplicates("norm_index").sort_values("norm_index")["layer"])
    ax.legend()
    return _finish(
        fig,
        ax,
        f"{method} at sparsity {sparsity:g}: before and after repair",
        out,
        f"fig7_variance_repair_{method}_{sparsity:g}",
    )


def variance_by_method(
    probes: pd.DataFrame,
    results: pd.DataFrame,
    out: Path,
    sparsity: float | None = None,
    repair: str = "none",
) -> list[Path]:
    """Fig. 6: per-layer variance ratio across methods (default: highest sparsity)."""
    rows = probes[probes.repair == repair]
    sparsity = sparsity if sparsity is not None else _highest_sparsity(rows)
    rows = rows[rows.sparsity == sparsity]
    if rows.method.nunique() < 2:
        return []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for method, group in rows.groupby("method", sort=False):
        curve = group.groupby("norm_index")["ratio"].mean()
        ax.plot(curve.index, curve.values, ms=3, label=method, **method_style(method))
        _seed_band(ax, group, method_colour(method))
    _norm_axis(ax, rows.drop_duplicates("norm_index").sort_values("norm_index")["layer"])
    ax.set_yscale("log")
    ax.legend(ncol=2)
    return _finish(
        fig,
        ax,
        f"variance ratio across methods, sparsity {sparsity:g}, repair {repair}",
        out,
        f"fig6_variance_methods_{sparsity:g}",
    )


def _mean_std(frame: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    return frame.groupby(by)[value].agg(["mean", "std", "count"]).reset_index()


#: Fig. 10's methods in the paper: MP against CHITA's selection and update, with and without
#: REFLOW (every method is drawn when none of CHITA's rows are there).
FIG10_METHODS = ("mp", "chita_s", "chita_u")


def accuracy_vs_sparsity(probes: pd.DataFrame, results: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 10: top-1 vs sparsity per method and repair: the mean over seeds, and a band of its
    95% interval (normal approximation: test examples and seed spread)."""
    rows = with_defaults(results)
    if rows.method.isin(FIG10_METHODS[1:]).any():
        rows = rows[rows.method.isin(FIG10_METHODS)]
    if rows.empty:
        return []
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for (method, repair), g in rows.groupby(["method", "repair"], sort=False):
        cells = g.groupby("sparsity")
        mean = cells.top1.mean()
        half = cells.apply(
            lambda c: 1.96 * accuracy_variance(c.top1.to_numpy(), examples_of(c)) ** 0.5
        )
        ax.plot(
            mean.index,
            mean.values,
            linestyle=REPAIR_STYLES.get(repair, "-"),
            ms=4,
            label=column_label(method, repair),
            **method_style(method),
        )
        ax.fill_between(
            mean.index, mean - half, mean + half, alpha=0.15, color=method_colour(method), lw=0
        )
    ax.axhline(rows.dense_top1.iloc[0], color="black", lw=1, ls=":", label="dense")
    ax.set_xlabel("sparsity")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend(ncol=2)
    return _finish(fig, ax, "accuracy vs sparsity", out, "fig10_accuracy_vs_sparsity")


def hamming_vs_sparsity(probes: pd.DataFrame, results: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 14: normalised mask Hamming distance to global magnitude (mp) vs sparsity."""
    if "hamming_vs_mp" not in results:
        return []
    rows = results[
        (results.repair == "none") & (results.method != "mp") & results.hamming_vs_mp.notna()
    ]
    if rows.empty:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, g in _mean_std(rows, ["method", "sparsity"], "hamming_vs_mp").groupby(
        "method", sort=False
    ):
        ax.plot(
            g.sparsity,
            100 * g["mean"],
            label=f"mp vs {method}",
            **method_style(method),
        )
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_xlabel("sparsity")
    ax.set_ylabel("normalised Hamming distance (%)")
    ax.legend()
    return _finish(fig, ax, "mask distance to global magnitude pruning", out, "fig14_hamming")


def prediction_histogram(
    probes: pd.DataFrame,
    results: pd.DataFrame,
    out: Path,
    method: str = "mp",
    sparsity: float | None = None,
) -> list[Path]:
    """Fig. 5: predicted-class histogram of the dense model, the pruned one, and after REFLOW."""
    rows = with_defaults(results)
    rows = rows[rows.method == method]
    sparsity = sparsity if sparsity is not None else _highest_sparsity(rows)
    rows = rows[rows.sparsity == sparsity]
    if rows.empty:
        return []
    bars = {"dense": json.loads(rows.dense_predictions.iloc[0])}
    for repair in ("none", "reflow"):
        match = rows[rows.repair == repair]
        if len(match):
            bars[column_label(method, repair)] = json.loads(match.predictions.iloc[0])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(bars)
    colours = ["black", method_colour(method), "tab:green"]
    for i, (label, counts) in enumerate(bars.items()):
        total = sum(counts)
        ax.bar(
            [c + i * width for c in range(len(counts))],
            [100 * n / total for n in counts],
            width,
            label=label,
            color=colours[i % 3],
            alpha=0.8,
        )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("share of test inputs (%)")
    ax.legend()
    return _finish(
        fig,
        ax,
        f"predictions at sparsity {sparsity:g}",
        out,
        f"fig5_predictions_{method}_{sparsity:g}",
    )


def _sweep_plot(
    results: pd.DataFrame, out: Path, x: str, title: str, name: str, xlabel: str, log: bool = False
) -> list[Path]:
    """Accuracy against one repair setting ``x``; the other settings held at their usual value."""
    rows = results[(results.repair != "none") & (results.recalibrate_layers == "all")]
    for key in ("calib_batches", "calib_batch_size"):
        if key != x and not rows.empty:
            rows = rows[rows[key] == rows[key].mode().iloc[0]]
    varied = rows.groupby(["method", "sparsity"])[x].transform("nunique") >= 2
    rows = rows[varied]  # only curves along which the setting was actually swept
    if rows.empty:
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colour = sparsity_colours(rows.sparsity)
    for (method, s), g in _mean_std(rows, ["method", "sparsity", x], "top1").groupby(
        ["method", "sparsity"]
    ):
        ax.errorbar(
            g[x],
            g["mean"],
            yerr=g["std"].fillna(0),
            marker="o",
            capsize=2,
            color=colour[s],
            label=f"{method}+reflow, sparsity {s:g}",
        )
    if log:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    ticks = sorted(rows[x].unique())
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])  # the swept values, not powers of two
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend()
    return _finish(fig, ax, title, out, name)


def accuracy_vs_calibration_batches(
    probes: pd.DataFrame, results: pd.DataFrame, out: Path
) -> list[Path]:
    """Fig. 11: accuracy vs number of calibration batches."""
    return _sweep_plot(
        results,
        out,
        "calib_batches",
        "accuracy vs calibration batches",
        "fig11_calibration_batches",
        "calibration batches",
        log=True,
    )


def accuracy_vs_batch_size(probes: pd.DataFrame, results: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 13: accuracy vs calibration batch size."""
    return _sweep_plot(
        results,
        out,
        "calib_batch_size",
        "accuracy vs calibration batch size",
        "fig13_batch_size",
        "calibration batch size",
        log=True,
    )


def layer_order_levels(results: pd.DataFrame, rows: pd.DataFrame) -> dict[tuple[str, float], float]:
    """The two ends of Fig. 12, k = 0 (no repair) and k = all (REFLOW), from matching runs."""
    same = (
        results.model.isin(rows.model)
        & results.dataset.isin(rows.dataset)
        & results.method.isin(rows.method)
        & results.sparsity.isin(rows.sparsity)
        & results.seed.isin(rows.seed)
        & (results.recalibrate_layers == "all")
    )
    full = (
        (results.repair == "reflow")
        & results.calib_batches.isin(rows.calib_batches)
        & results.calib_batch_size.isin(rows.calib_batch_size)
    )
    ends = results[same & ((results.repair == "none") | full)]
    return ends.groupby(["repair", "sparsity"]).top1.mean().to_dict()


def layer_order(probes: pd.DataFrame, results: pd.DataFrame, out: Path) -> list[Path]:
    """Fig. 12: accuracy when recalibrating only the first k or the last k BN layers."""
    rows = results[(results.repair == "reflow") & results.recalibrate_layers.str.contains(":")]
    if rows.empty:
        return []
    rows = rows.copy()
    parts = rows.recalibrate_layers.str.split(":", expand=True)  # "first:4" → first, 4
    rows["direction"] = parts[0].map({"first": "forward (first k)", "last": "backward (last k)"})
    rows["k"] = parts[1].astype(int)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colour = sparsity_colours(rows.sparsity)
    for (direction, s), g in _mean_std(rows, ["direction", "sparsity", "k"], "top1").groupby(
        ["direction", "sparsity"]
    ):
        ax.plot(
            g.k,
            g["mean"],
            "-" if direction.startswith("forward") else "--",
            marker="o",
            ms=3,
            color=colour[s],
            label=f"{direction}, sparsity {s:g}",
        )
    for (repair, s), level in layer_order_levels(results, rows).items():
        what = "no BN layer (no repair)" if repair == "none" else "every BN layer (REFLOW)"
        ls = ":" if repair == "none" else "-."
        ax.axhline(level, color=colour[s], lw=1, ls=ls, label=f"{what}, sparsity {s:g}")
    ax.set_xlabel("BN layers recalibrated (k)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend()
    return _finish(fig, ax, "cumulative REFLOW by layer order", out, "fig12_layer_order")


def critical_difference(probes: pd.DataFrame, results: pd.DataFrame, out: Path) -> list[Path]:
    """Demšar's critical-difference diagram: mean rank of each method+repair over the blocks
    (sparsities; checkpoints and datasets), pairs the Nemenyi test cannot separate joined by a
    bar (needs scikit-posthocs: pip install -e ".[stats]")."""
    try:
        ranking = rank_methods(with_defaults(results))
    except ReflowError:
        return []
    if ranking.nemenyi is None:
        return []
    import scikit_posthocs as sp

    fig, ax = plt.subplots(figsize=(8, 0.4 * len(ranking.ranks) + 1.5))
    sp.critical_difference_diagram(ranking.ranks, ranking.nemenyi, ax=ax)
    title = (
        f"mean rank over {len(ranking.scores)} blocks; Friedman p {ranking.friedman_p:.2g}; "
        "bars: Nemenyi p ≥ 0.05"
    )
    return _finish(fig, ax, title, out, "critical_difference")


FIGURES: dict[str, Callable[..., list[Path]]] = {
    "variance": variance_by_layer,
    "variance-repair": variance_by_repair,
    "variance-methods": variance_by_method,
    "accuracy": accuracy_vs_sparsity,
    "hamming": hamming_vs_sparsity,
    "predictions": prediction_histogram,
    "calibration-batches": accuracy_vs_calibration_batches,
    "batch-size": accuracy_vs_batch_size,
    "layer-order": layer_order,
    "cd": critical_difference,
}


#: Settings that do not change a row's accuracy: rows differing only in them are drawn together.
DRAWING_IGNORES = ("probe_samples", "eval_batch_size")


def plot_all(
    results: pd.DataFrame, probes: pd.DataFrame, out: Path, only: list[str] | None = None
) -> dict[str, list[Path]]:
    """Draw every figure the tables have rows for, per model (a folder each when there are
    several), from rows in the default configuration (the calibration settings aside, which the
    ablation figures sweep); returns ``"model: figure"`` (or the figure name) → files written."""
    results = expand_config(results[results.error.isna()] if "error" in results else results)
    if not results.empty:
        tags = [
            drawing_variant(m, r, c)
            for m, r, c in zip(results.method, results.repair, results.config, strict=True)
        ]
        results = results[[t == "" for t in tags]]
    if probes.empty:  # e.g. runs with probe_samples = 0: probe figures are skipped
        probes = pd.DataFrame(
            columns=[
                "run_id",
                "model",
                "method",
                "repair",
                "sparsity",
                "norm_index",
                "layer",
                "ratio",
            ]
        )
    else:
        keep = ["run_id", *DEFAULTS]
        probes = with_defaults(probes.merge(results[keep], on="run_id"))
    models = sorted(results.model.unique()) if not results.empty else []
    written: dict[str, list[Path]] = {}
    for model in models or [None]:
        rows = results[results.model == model] if model else results
        aux = probes[probes.model == model] if model else probes
        folder = out / model if len(models) > 1 else out
        prefix = f"{model}: " if len(models) > 1 else ""
        for name, draw in FIGURES.items():
            if only and name not in only:
                continue
            written[prefix + name] = draw(aux, rows, folder)
    return written


def drawing_variant(method: str, repair: str, config: str | None) -> str:
    """A row's configuration tag, ignoring the settings that cannot move its accuracy."""
    if not isinstance(config, str):
        return ""
    stored = {k: v for k, v in json.loads(config).items() if k not in DRAWING_IGNORES}
    return variant(method, repair, json.dumps(stored))
