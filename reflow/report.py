"""One Markdown report: our measurements beside the paper's, figures embedded, provenance of
every number, and a plain list of which claims reproduced here and which did not
(`reflow.verdicts` decides them from intervals; a claim without rows is "not measured", never
assumed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from reflow import paper
from reflow.atomic import atomic_write
from reflow.outcomes import Outcomes
from reflow.paths import check_output
from reflow.plots import plot_all
from reflow.results import ResultStore
from reflow.tables import expand_config, table_for, variant, with_defaults
from reflow.verdicts import CLAIMS_BY_MODEL, Evidence, Verdict, check_claims

#: How the report decides a claim (printed above the verdicts).
CLAIM_RULES = (
    "Each claim is a stated test on the stored rows; comparative claims are decided per "
    "sparsity from the 95% interval of the difference of top-1 (paired two-level bootstrap "
    "over seeds and test examples where the rows kept per-example outcomes, else a normal "
    "approximation, said in the evidence): *reproduced* when the interval lies within the "
    "claimed bounds, *not reproduced* when wholly outside, *indistinguishable* when it "
    "straddles a bound; a claim is *incomplete* when a sparsity it names has no rows. Bounds "
    "that are not the paper's are marked as ours; the source column says whose claim it is."
)


def claim_rows(
    results: pd.DataFrame, probes: pd.DataFrame, model: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows a model's claims are tested on: that model, the paper's repair settings, the
    default of every other setting (no scope, dense-BN or pattern variants mixed in), and per
    method one configuration of its options: the default, or where a sweep ran the method only
    with other options (CHITA and CBS with 250 gradients on MobileNet) the most common of those,
    named by `claim_variants`."""
    rows = with_defaults(expand_config(results))
    rows = rows[rows.model == model]
    if not rows.empty:
        columns = zip(rows.method, rows.repair, rows.config, strict=True)
        rows = rows[[variant(m, r, c, options=False) == "" for m, r, c in columns]]
    if not rows.empty:
        rows = rows.reset_index(drop=True)
        columns = zip(rows.method, rows.repair, rows.config, strict=True)
        tags = pd.Series([variant(m, r, c) for m, r, c in columns])
        chosen = tags.groupby(rows.method).agg(
            lambda t: "" if (t == "").any() else t.value_counts().idxmax()
        )
        rows = rows[tags == rows.method.map(chosen)]
    probes = probes[probes.run_id.isin(rows.run_id)] if not probes.empty else probes
    return rows, probes


def claim_variants(rows: pd.DataFrame) -> dict[str, str]:
    """Methods whose claim rows ran with non-default options, and those options."""
    tags = {
        m: variant(m, r, c) for m, r, c in zip(rows.method, rows.repair, rows.config, strict=True)
    }
    return {m: t for m, t in sorted(tags.items()) if t}


def evaluate_claims(
    results: pd.DataFrame,
    probes: pd.DataFrame,
    model: str = "resnet20",
    outcomes: Mapping[str, Outcomes] | None = None,
) -> list[Verdict]:
    """``model``'s claims decided on its claim rows, with paired intervals where ``outcomes``
    (per-example, by run id) cover them."""
    rows, model_probes = claim_rows(results, probes, model)
    return check_claims(Evidence(rows, model_probes, outcomes or {}), model)


def _paper_table_section(results: pd.DataFrame, outcomes: Mapping[str, Outcomes]) -> list[str]:
    """Our ResNet-20 numbers in the paper's Table 1 layout, beside the paper's own."""
    lines = ["## Table 1 in the paper's layout", ""]
    resnet = results[results.model == "resnet20"]
    for layout, what in (
        ("paper", "every method on the common scope (all conv and linear weights): like for like"),
        (
            "paper-faithful",
            "WF and CBS on the 18 block convs and CHITA on its own layer set, as "
            "their papers prune; MP and REFLOW on all weights",
        ),
    ):
        if resnet.empty:
            break
        for title, text in table_for(resnet, layout=layout, outcomes=outcomes):
            lines += [f"### Ours, {what}", "", title, "", text, ""]
    lines += [
        f"### The paper's ({paper.SOURCE}; dense {paper.DENSE_TOP1}%)",
        "",
        "Their data is the original CIFAR-10; ours is the JPEG re-encoding (a fine-tuned "
        "checkpoint, dense 88.44%), so compare trends and gaps, not absolute values.",
        "",
        paper.TABLE1.to_markdown(floatfmt=".2f"),
        "",
    ]
    return lines


def _mobilenet_section(results: pd.DataFrame) -> list[str]:
    """Our MobileNetV1 (CIFAR) MP, WF, CBS, CHITA and MP+REFLOW beside the paper's ImageNet
    MobileNet rows."""
    rows, _ = claim_rows(results, pd.DataFrame(), "mobilenet_v1")
    names = {
        ("mp", "none"): "MP (ours)",
        ("wf_u", "none"): "WF (ours)",
        ("cbs_u", "none"): "CBS (ours)",
        ("chita_u", "none"): "CHITA (ours)",
        ("mp", "reflow"): "REFLOW (ours)",
    }
    rows = rows[[(m, r) in names for m, r in zip(rows.method, rows.repair, strict=True)]]
    if rows.empty:
        return []
    rows = rows.assign(column=[names[m, r] for m, r in zip(rows.method, rows.repair, strict=True)])
    ours = rows.pivot_table(index="sparsity", columns="column", values="top1", aggfunc="mean")
    ours = ours[[c for c in names.values() if c in ours]]
    table = paper.MOBILENET.join(ours, how="outer")
    return [
        "## MobileNet",
        "",
        f"Ours: MobileNetV1 for CIFAR on cifar10-jpeg, dense {rows.dense_top1.iloc[0]:.2f}%. "
        f"The paper's: {paper.MOBILENET_SOURCE}, dense {paper.MOBILENET_DENSE_TOP1}%. Different "
        "data and scale: compare the shape (collapse, recovery), not absolute values.",
        "",
        table.to_markdown(floatfmt=".2f"),
        "",
    ]


def _scope_equality_note(results: pd.DataFrame) -> list[str]:
    """On option-A ResNets CHITA's layer set is every weight: its rows must equal the `all` ones."""
    rows = expand_config(
        results[(results.model == "resnet20") & results.method.isin(["chita_s", "chita_u"])]
    )
    if rows.empty or "scope" not in rows or rows.scope.nunique() < 2:
        return []
    key = ["method", "repair", "sparsity", "seed"]
    both = rows[rows.scope == "all"].merge(
        rows[rows.scope == "chita"], on=key, suffixes=("_all", "_chita")
    )
    if both.empty:
        return []
    gap = (both.top1_all - both.top1_chita).abs().max()
    return [
        f"CHITA's layer set (`--scope chita`) on resnet20 selects the same weights as `all` "
        f"(option-A shortcuts have no conv): over {len(both)} matching rows the largest top-1 "
        f"difference is {gap:.2f} points.",
        "",
    ]


def write_report(folder: Path, out: Path) -> Path:
    """Write ``out`` (Markdown) with figures under ``out.parent/figures``."""
    check_output(out, "--out")
    store = ResultStore(folder, readonly=True)
    results = store.read()
    results = results[results.error.isna()] if "error" in results else results
    probes = store.read("probes")
    figures_dir = check_output(out.parent / "figures", "--out", folder=True)
    written = plot_all(results, probes, figures_dir)
    measured = [m for m in CLAIMS_BY_MODEL if (results.model == m).any()] or ["resnet20"]
    lines = ["# Reproduction report: Signal Collapse in One-Shot Pruning", ""]
    lines += [
        f"Results folder: `{folder}` ({len(results)} rows). Every number below is read from "
        "its `results.sqlite` (CSV exports beside it); rows record their git commit, torch "
        "version, "
        "device and full config.",
        "",
    ]
    prov = results.groupby(["git_commit", "torch", "device"]).size().reset_index(name="rows")
    lines += ["## Provenance", "", prov.to_markdown(index=False), ""]
    outcomes = store.outcomes()
    lines += ["## Claims", "", CLAIM_RULES, ""]
    for model in measured:
        rows, model_probes = claim_rows(results, probes, model)
        verdicts = check_claims(Evidence(rows, model_probes, outcomes), model)
        lines += [f"## Claims on {model}", ""]
        options = claim_variants(rows)
        if options:
            named = "; ".join(f"{m} with {t}" for m, t in options.items())
            lines += [
                f"Methods tested with non-default options (as their sweep ran them): {named}.",
                "",
            ]
        lines += ["| claim | source | test | outcome | evidence |", "|---|---|---|---|---|"]
        lines += [
            f"| {v.claim} | {v.source} | {v.test} | **{v.outcome}** | {v.evidence} |"
            for v in verdicts
        ]
        lines += [""]
    for title, text in table_for(results, by_repair=True, outcomes=outcomes):
        lines += [
            f"## Top-1 (%): {title}",
            "",
            "A bracketed tag marks a non-default configuration.",
            "",
            text,
            "",
        ]
    lines += _paper_table_section(results, outcomes)
    lines += _mobilenet_section(results)
    lines += _scope_equality_note(results)
    lines += ["## Figures", ""]
    for name, paths in written.items():
        png = [p for p in paths if p.suffix == ".png"]
        if png:
            lines += [f"### {name}", "", f"![{name}]({os.path.relpath(png[0], out.parent)})", ""]
    missing = [n for n, p in written.items() if not p]
    if missing:
        lines += [f"Not drawn (no rows for them in this folder): {', '.join(missing)}.", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines)
    atomic_write(out, lambda f: f.write(text))
    return out
