"""Paper tables from the results table alone: Table 1 layout (sparsity rows × method columns,
best per row in bold) as Markdown or LaTeX, with mean ± std where several seeds exist."""

from __future__ import annotations

import json

import pandas as pd

from reflow.errors import ReflowError

FORMATS = ("markdown", "latex", "csv")
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
    settings = pd.DataFrame([json.loads(c) for c in frame["config"]], index=frame.index)
    keep = [c for c in settings.columns if c not in frame.columns and c != "method_config"]
    return frame.join(settings[keep])


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


def accuracy_table(frame: pd.DataFrame, metric: str = "top1") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and std (over seeds) of ``metric``, sparsity rows × method[+repair] columns."""
    frame = frame.assign(
        column=[column_label(m, r) for m, r in zip(frame.method, frame.repair, strict=True)]
    )
    groups = frame.groupby(["sparsity", "column"], sort=False)[metric]
    mean = groups.mean().unstack("column").sort_index()
    std = groups.std(ddof=1).unstack("column").reindex_like(mean)
    order = list(dict.fromkeys(frame["column"]))
    return mean[order], std[order]


def render(mean: pd.DataFrame, std: pd.DataFrame, fmt: str, digits: int = 2) -> str:
    """Format as text with the best value of each row in bold (ties all bold)."""
    if fmt not in FORMATS:
        raise ReflowError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if fmt == "csv":
        return mean.to_csv()
    bold = (lambda s: f"**{s}**") if fmt == "markdown" else (lambda s: rf"\textbf{{{s}}}")
    pm = " ± " if fmt == "markdown" else r" $\pm$ "
    cells = pd.DataFrame(index=mean.index, columns=mean.columns, dtype=object)
    for sparsity, row in mean.iterrows():
        best = row.max()
        for column, value in row.items():
            if pd.isna(value):
                cells.loc[sparsity, column] = "–"
                continue
            spread = std.loc[sparsity, column]
            text = f"{value:.{digits}f}" + (f"{pm}{spread:.{digits}f}" if pd.notna(spread) else "")
            cells.loc[sparsity, column] = bold(text) if value == best else text
    cells.index = [f"{s:g}" for s in cells.index]
    cells.index.name = "sparsity"
    cells.columns.name = None
    if fmt == "markdown":
        align = ["right"] * (len(cells.columns) + 1)
        return cells.to_markdown(colalign=align, disable_numparse=True)
    return cells.to_latex(escape=False, column_format="r" * (len(cells.columns) + 1))
