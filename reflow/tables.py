"""Paper tables from the results table: Table 1 layout (sparsity rows × method columns) as
Markdown or LaTeX, every cell mean ± std (n seeds) or with its interval, and the best of each row
in bold together with every cell not significantly worse than it (`reflow.uncertainty`)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pandas as pd

from reflow.errors import ReflowError
from reflow.outcomes import Outcomes
from reflow.uncertainty import (
    ALPHA,
    Resamplers,
    TableUncertainty,
    compare_columns,
    table_uncertainty,
)

FORMATS = ("markdown", "latex", "csv")
#: The paper's Table 1 columns, as (method, repair) pairs of ours.
PAPER_COLUMNS = {
    "MP": ("mp", "none"),
    "WF": ("wf_u", "none"),
    "CBS": ("cbs_u", "none"),
    "CHITA": ("chita_u", "none"),
    "REFLOW": ("mp", "reflow"),
}
#: Each method's own paper's layer set (WoodFisher's and CBS's ResNet-20 scripts prune the 18
#: block convs; CHITA keeps the first conv and classifier, drops shortcut convs).
FAITHFUL_VARIANTS = {"WF": "scope=blocks", "CBS": "scope=blocks", "CHITA": "scope=chita"}
LAYOUTS = {
    "methods": "one column per method+repair pair",
    "paper": "the paper's Table 1 (" + " | ".join(PAPER_COLUMNS) + "), every method on the "
    "common scope: like for like",
    "paper-faithful": "the paper's Table 1 with WF and CBS on the block convs and CHITA on its "
    "own layer set, as their papers prune",
}
#: The paper's repair settings: 50 calibration batches of 128, every BN layer.
DEFAULTS = {"calib_batches": 50, "calib_batch_size": 128, "recalibrate_layers": "all"}


def column_label(method: str, repair: str) -> str:
    """``mp`` for repair none, else ``mp+reflow``: the (method, repair) pair of a column."""
    return method if repair == "none" else f"{method}+{repair}"


def filter_rows(frame: pd.DataFrame, **equal: object) -> pd.DataFrame:
    """Rows whose columns equal the given values (None = any); errored rows dropped."""
    if frame.empty:
        raise ReflowError("the results table is empty; run `reflow run` first")
    keep = frame["error"].isna() if "error" in frame else pd.Series(True, index=frame.index)
    for column, value in equal.items():
        if value is None:
            continue
        if column not in frame:
            raise ReflowError(f"results have no column {column!r}")
        values = value if isinstance(value, list | tuple | set) else [value]
        keep &= frame[column].isin(values)
    selected = frame[keep]
    if selected.empty:
        shown = ", ".join(f"{k}={v}" for k, v in equal.items() if v is not None)
        raise ReflowError(f"no finished rows match {shown or 'the filter'}")
    return selected


def expand_config(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the harness settings stored in the ``config`` JSON as columns."""
    if frame.empty or "config" not in frame:
        return frame
    settings = pd.DataFrame([json.loads(c) for c in frame["config"]])
    keep = [c for c in settings.columns if c not in frame.columns and c != "method_config"]
    return frame.assign(**{c: settings[c].to_numpy() for c in keep})  # by position


def with_defaults(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of one repair configuration, so figures never mix settings: the paper's defaults
    (50 × 128, all BN layers) when present, else the most common configuration."""
    keys = [k for k in DEFAULTS if k in frame]
    if frame.empty or not keys:
        return frame
    configs = frame[keys].astype(str).agg("|".join, axis=1)
    default = "|".join(str(DEFAULTS[k]) for k in keys)
    chosen = default if (configs == default).any() else configs.value_counts().idxmax()
    return frame[configs == chosen]


def variant(method: str, repair: str, config: str | None, options: bool = True) -> str:
    """What sets a row's configuration apart from the defaults, apart from the calibration
    settings `with_defaults` already holds fixed: ``""`` or e.g. ``"scope=blocks"``; method and
    repair options count unless ``options`` is False."""
    if not isinstance(config, str):
        return ""
    from reflow.identity import identity_of_stored_config

    ident = identity_of_stored_config(method, repair, json.loads(config))
    flat = {k: v for k, v in ident.items() if k not in DEFAULTS and not k.endswith("_config")}
    if options:
        for key in ("method_config", "repair_config"):
            flat |= ident.get(key, {})
    return ", ".join(f"{k}={v}" for k, v in sorted(flat.items()))


def labelled(frame: pd.DataFrame, with_repair: bool = True) -> pd.Series:
    """Column labels: ``method+repair`` (or ``method``), with the configuration variant when
    not default."""
    configs = frame["config"] if "config" in frame else [None] * len(frame)
    labels = []
    for m, r, c in zip(frame.method, frame.repair, configs, strict=True):
        tag = variant(m, r, c)
        base = column_label(m, r) if with_repair else m
        labels.append(base + (f" [{tag}]" if tag else ""))
    return pd.Series(labels, index=frame.index)


def registry_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in the registries' order of methods, then repairs (unregistered names last), so
    columns come out in the same order whatever order the rows were run in."""
    from reflow.baselines import list_methods
    from reflow.repairs import list_repairs

    ranks = {
        "method": {name: i for i, name in enumerate(list_methods())},
        "repair": {name: i for i, name in enumerate(list_repairs())},
    }
    return frame.sort_values(
        ["method", "repair"],
        key=lambda column: column.map(lambda v: ranks[column.name].get(v, len(ranks[column.name]))),
        kind="stable",
    )


def labelled_rows(frame: pd.DataFrame, with_repair: bool = True) -> pd.DataFrame:
    """Rows in registry order with their table column (``method+repair`` [variant])."""
    frame = registry_order(frame)
    return frame.assign(column=labelled(frame, with_repair))


def accuracy_table(
    frame: pd.DataFrame, metric: str = "top1", with_repair: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and std (over seeds) of ``metric``, sparsity rows × method[+repair] columns; rows
    of different configurations get different columns, never one average."""
    mean, std, _ = seed_statistics(labelled_rows(frame, with_repair), metric)
    return mean, std


def seed_statistics(
    rows: pd.DataFrame, metric: str = "top1"
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Mean, std (ddof 1) and n over seeds per cell of `labelled_rows`, columns in row order."""
    groups = rows.groupby(["sparsity", "column"], sort=False)[metric]
    mean = groups.mean().unstack("column").sort_index()
    std = groups.std(ddof=1).unstack("column").reindex_like(mean)
    count = groups.count().unstack("column").reindex_like(mean)
    order = list(dict.fromkeys(rows["column"]))
    return mean[order], std[order], count[order]


STATS = {
    "std": "mean ± std over seeds (n seeds)",
    "ci": "mean [95% interval: two-level bootstrap over seeds and test examples] (n seeds)",
}


def render(
    mean: pd.DataFrame,
    std: pd.DataFrame,
    fmt: str,
    digits: int = 2,
    count: pd.DataFrame | None = None,
    uncertainty: TableUncertainty | None = None,
    stat: str = "std",
) -> str:
    """Format as text: each cell as `STATS` [``stat``] says, the best of each row in bold with
    every cell not significantly worse than it when ``uncertainty`` tested them (else exact
    ties only)."""
    if fmt not in FORMATS:
        raise ReflowError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if stat not in STATS:
        raise ReflowError(f"unknown --stat {stat!r}; choose from {', '.join(STATS)}")
    if fmt == "csv":
        return mean.to_csv()
    bold = (lambda s: f"**{s}**") if fmt == "markdown" else (lambda s: rf"\textbf{{{s}}}")
    pm = " ± " if fmt == "markdown" else r" $\pm$ "
    marks = uncertainty.best if uncertainty else mean.eq(mean.max(axis=1), axis=0)
    cells = pd.DataFrame(index=mean.index, columns=mean.columns, dtype=object)
    for sparsity, row in mean.iterrows():
        for column, value in row.items():
            if pd.isna(value):
                cells.loc[sparsity, column] = "–"
                continue
            text = f"{value:.{digits}f}"
            if stat == "std":
                spread = std.loc[sparsity, column]
                text += f"{pm}{spread:.{digits}f}" if pd.notna(spread) else ""
            else:
                low = uncertainty.low.loc[sparsity, column] if uncertainty else float("nan")
                high = uncertainty.high.loc[sparsity, column] if uncertainty else float("nan")
                text += f" [{low:.{digits}f}, {high:.{digits}f}]" if pd.notna(low) else " [n/a]"
            if count is not None and pd.notna(count.loc[sparsity, column]):
                text += f" ({int(count.loc[sparsity, column])})"
            cells.loc[sparsity, column] = bold(text) if marks.loc[sparsity, column] else text
    cells.index = [f"{s:g}" for s in cells.index]
    cells.index.name = "sparsity"
    cells.columns.name = None
    if fmt == "markdown":
        align = ["right"] * (len(cells.columns) + 1)
        return cells.to_markdown(colalign=align, disable_numparse=True)
    return cells.to_latex(escape=False, column_format="r" * (len(cells.columns) + 1))


def paper_columns(faithful: bool = False) -> dict[str, str]:
    """The paper's Table 1 column names → our column labels."""
    variants = FAITHFUL_VARIANTS if faithful else {}
    return {
        name: column_label(*pair) + (f" [{variants[name]}]" if name in variants else "")
        for name, pair in PAPER_COLUMNS.items()
    }


def paper_layout(*tables: pd.DataFrame, faithful: bool = False) -> list[pd.DataFrame]:
    """Columns renamed and ordered as the paper's Table 1; a column we have no rows for is
    shown empty ("–"), never filled from elsewhere."""
    wanted = paper_columns(faithful)
    return [
        pd.DataFrame(
            {name: t[col] if col in t else float("nan") for name, col in wanted.items()},
            index=t.index,
        )
        for t in tables
    ]


def legend(stat: str, uncertainty: TableUncertainty | None) -> str:
    """What a table's cells and bold marks mean, printed under it."""
    if uncertainty is None or not uncertainty.tested:
        ties = "bold: the best of each row (no per-example outcomes stored: ties not tested)"
    else:
        ties = (
            f"bold: the best of each row and every cell not significantly worse than it "
            f"(exact McNemar on discordant test examples summed over common seeds, Holm-"
            f"corrected across the table, alpha {ALPHA})"
        )
    return f"cells: {STATS[stat]}; {ties}"


def table_for(
    frame: pd.DataFrame,
    layout: str = "methods",
    fmt: str = "markdown",
    metric: str = "top1",
    digits: int = 2,
    by_repair: bool = False,
    outcomes: Mapping[str, Outcomes] | None = None,
    stat: str = "std",
    **filters: object,
) -> list[tuple[str, str]]:
    """Rendered tables, one per (model, checkpoint, dataset) (and per repair with
    ``by_repair``, methods as columns), with a title each and, under it, its legend.

    With ``outcomes`` (a store's per-example outcomes by run id) the cells get intervals and
    the best marks account for uncertainty; without, intervals read n/a."""
    if layout not in LAYOUTS:
        raise ReflowError(f"unknown layout {layout!r}; layouts: {', '.join(LAYOUTS)}")
    if stat not in STATS:
        raise ReflowError(f"unknown --stat {stat!r}; choose from {', '.join(STATS)}")
    rows = filter_rows(frame, **filters)
    rows = with_defaults(expand_config(rows))  # one repair configuration per table, never mixed
    keys = ["model", "checkpoint", "dataset"] + (["repair"] if by_repair else [])
    groups = rows.groupby(keys, sort=False)
    resamplers = Resamplers()
    out = []
    for key, group in groups:
        model, ckpt, dataset = key[:3]
        cells = labelled_rows(group, with_repair=not by_repair)
        mean, std, count = seed_statistics(cells, metric)
        if layout.startswith("paper"):
            names = {col: name for name, col in paper_columns(layout == "paper-faithful").items()}
            cells = cells.assign(column=cells["column"].map(names)).dropna(subset=["column"])
            mean, std, count = paper_layout(mean, std, count, faithful=layout == "paper-faithful")
        uncertainty = None
        if outcomes is not None and metric == "top1":
            uncertainty = table_uncertainty(cells, mean, outcomes, resamplers)
        dense = group["dense_top1"].iloc[0]
        repair = f", repair {key[3]}" if by_repair else ""
        title = (
            f"{model} ({ckpt}) on {dataset}{repair}: {metric}, dense top-1 {dense:.2f}"
            if len(groups) > 1 or fmt != "csv"
            else ""
        )
        text = render(mean, std, fmt, digits, count, uncertainty, stat)
        if fmt == "markdown":
            text += "\n\n" + legend(stat, uncertainty)
        elif fmt == "latex":  # a comment, so the file still compiles
            text += "\n% " + legend(stat, uncertainty)
        out.append((title, text))
    return out


def comparison_lines(
    frame: pd.DataFrame,
    outcomes: Mapping[str, Outcomes],
    a: str,
    b: str,
    sparsities: tuple[float, ...] | None = None,
    **filters: object,
) -> list[str]:
    """`reflow compare`: per (model, checkpoint, dataset) and sparsity, one line with the
    paired difference A − B of top-1, its 95% interval, and McNemar's p (raw and Holm-corrected
    across the lines of that setup)."""
    rows = with_defaults(expand_config(filter_rows(frame, **filters)))
    if sparsities:
        rows = rows[rows["sparsity"].round(6).isin([round(s, 6) for s in sparsities])]
    lines = []
    for (model, ckpt, dataset), group in rows.groupby(["model", "checkpoint", "dataset"]):
        cells = labelled_rows(group)
        columns = list(dict.fromkeys(cells["column"]))
        left, right = (_column_named(name, columns, f"{model} on {dataset}") for name in (a, b))
        lines.append(f"{model} ({ckpt}) on {dataset}: {left} − {right}, top-1 points")
        found = compare_columns(cells, outcomes, left, right)
        if not found:
            lines.append("  no sparsity has rows of both")
        for sparsity, c in found:
            if c is None:
                lines.append(f"  {sparsity:g}: n/a (no comparable per-example outcomes stored)")
                continue
            verdict = {"A": f"{a} better", "B": f"{b} better", "tie": "indistinguishable"}
            lines.append(
                f"  {sparsity:g}: {c.difference:+.2f} [{c.low:+.2f}, {c.high:+.2f}]  "
                f"McNemar p {c.p_value:.2g} (Holm {c.p_holm:.2g}; {c.a_only} vs {c.b_only} "
                f"discordant, {c.seeds} seed{'s' * (c.seeds > 1)})  {verdict[c.direction]}"
            )
    return lines


def _column_named(name: str, columns: list[str], where: str) -> str:
    """The column ``name`` means: its exact label, or the one column whose label is ``name``
    with a configuration variant (``mp+reflow [eval_samples=2000]``)."""
    if name in columns:
        return name
    close = [c for c in columns if c.split(" [")[0] == name]
    if len(close) == 1:
        return close[0]
    if close:
        raise ReflowError(f"{name} has {len(close)} configurations in {where}: " + "; ".join(close))
    raise ReflowError(f"no rows labelled {name} in {where}; columns there: {', '.join(columns)}")


def collapse_tables(
    probes: pd.DataFrame, layers: pd.DataFrame, repair: object = None, **filters: object
) -> tuple[pd.DataFrame, pd.Series]:
    """Signal collapse layer by layer: the variance ratio of every normalisation layer (rows,
    in network order) per repair (columns), mean over seeds; and each prunable layer's density
    (share of weights kept). Raises when no stored row matches."""
    if probes.empty:
        raise ReflowError(
            "no probe rows (variance ratios) in this store; they are written by runs with "
            "--probe-samples above 0 (the default is 2000)"
        )
    rows = filter_rows(probes, repair=repair, **filters)
    if rows.empty:
        shown = ", ".join(f"{k}={v}" for k, v in filters.items() if v is not None)
        raise ReflowError(f"no probe rows match {shown}; see `reflow table` for what is stored")
    table = rows.pivot_table(
        index=["norm_index", "layer"], columns="repair", values="ratio", aggfunc="mean"
    ).sort_index()
    table.columns.name = None
    density = filter_rows(layers, **filters).groupby(["layer_index", "layer"])["density"].mean()
    return table.droplevel("norm_index"), density.droplevel("layer_index")
