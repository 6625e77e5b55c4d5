"""One Markdown report: our measurements beside the paper's, figures embedded, provenance of
every number, and a plain list of which claims reproduced here and which did not.

Each claim has an explicit, stated test on the stored rows; a claim without rows is "not
measured", never assumed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from reflow import paper
from reflow.atomic import atomic_write
from reflow.paths import check_output
from reflow.plots import plot_all
from reflow.results import ResultStore
from reflow.tables import expand_config, table_for, variant, with_defaults


@dataclass
class Verdict:
    claim: str
    test: str
    outcome: str  # "reproduced", "not reproduced", "not measured"
    evidence: str


def _top1(rows: pd.DataFrame, method: str, repair: str, sparsity: float) -> float | None:
    match = rows[(rows.method == method) & (rows.repair == repair) & (rows.sparsity == sparsity)]
    return float(match.top1.mean()) if len(match) else None


def _claim_collapse(sparsity: float, paper_text: str) -> Callable[..., Verdict]:
    def check(rows: pd.DataFrame, probes: pd.DataFrame) -> Verdict:
        claim = (
            f"Without repair, MP at {sparsity:.0%} sparsity collapses: near-chance accuracy, one "
            f"class dominates ({paper_text})."
        )
        test = (
            f"mp@{sparsity:g} top-1 < 20% and the most common predicted class takes > 50% of inputs"
        )
        match = rows[(rows.method == "mp") & (rows.repair == "none") & (rows.sparsity == sparsity)]
        if match.empty:
            return Verdict(claim, test, "not measured", f"no mp@{sparsity:g} row")
        top1, share = match.top1.mean(), match.top_class_share.mean()
        ok = top1 < 20 and share > 0.5
        return Verdict(
            claim,
            test,
            "reproduced" if ok else "not reproduced",
            f"top-1 {top1:.2f}%, top-class share {share:.3f}",
        )

    return check


def _claim_variance(sparsity: float) -> Callable[..., Verdict]:
    def check(rows: pd.DataFrame, probes: pd.DataFrame) -> Verdict:
        claim = (
            "Signal collapse: the deepest normalisation layer's output variance shrinks under "
            "MP; REFLOW restores it."
        )
        test = (
            f"mp@{sparsity:g} deepest-layer variance ratio < 0.5 without repair and within "
            "[0.5, 1.5] with REFLOW"
        )
        if probes.empty:
            return Verdict(claim, test, "not measured", "no probe rows")
        sel = probes[(probes.method == "mp") & (probes.sparsity == sparsity)]
        if sel.repair.nunique() < 2:
            return Verdict(
                claim, test, "not measured", f"no mp@{sparsity:g} probes with and without REFLOW"
            )
        deepest = sel[sel.norm_index == sel.norm_index.max()]
        before = deepest[deepest.repair == "none"].ratio.mean()
        after = deepest[deepest.repair == "reflow"].ratio.mean()
        ok = before < 0.5 and 0.5 <= after <= 1.5
        return Verdict(
            claim,
            test,
            "reproduced" if ok else "not reproduced",
            f"ratio {before:.3f} → {after:.3f} ({deepest.layer.iloc[0]})",
        )

    return check


def _claim_recovery(sparsities: tuple[float, ...], paper_text: str) -> Callable[..., Verdict]:
    def check(rows: pd.DataFrame, probes: pd.DataFrame) -> Verdict:
        claim = f"REFLOW recovers most of MP's loss at high sparsity (paper: {paper_text})."
        test = "mp+reflow exceeds mp by > 20 points at " + " and at ".join(
            f"{s:g}" for s in sparsities
        )
        gains = {}
        for s in sparsities:
            a, b = _top1(rows, "mp", "none", s), _top1(rows, "mp", "reflow", s)
            if a is None or b is None:
                return Verdict(claim, test, "not measured", f"no mp / mp+reflow rows at {s}")
            gains[s] = (a, b)
        ok = all(b - a > 20 for a, b in gains.values())
        evidence = "; ".join(f"{s:g}: {a:.2f} → {b:.2f}" for s, (a, b) in gains.items())
        return Verdict(claim, test, "reproduced" if ok else "not reproduced", evidence)

    return check


def _claim_reflow_never_hurts(rows: pd.DataFrame, probes: pd.DataFrame) -> Verdict:
    claim = "REFLOW does not lower MP's accuracy at low sparsity."
    test = "mp+reflow top-1 ≥ mp top-1 − 0.5 at each sparsity ≤ 0.6 measured"
    pairs = [
        (s, a, b)
        for s in sorted(rows.sparsity.unique())
        if s <= 0.6
        and (a := _top1(rows, "mp", "none", s)) is not None
        and (b := _top1(rows, "mp", "reflow", s)) is not None
    ]
    if not pairs:
        return Verdict(claim, test, "not measured", "no mp and mp+reflow rows at ≤ 0.6")
    ok = all(b >= a - 0.5 for _, a, b in pairs)
    evidence = "; ".join(f"{s:g}: {a:.2f} → {b:.2f}" for s, a, b in pairs)
    return Verdict(claim, test, "reproduced" if ok else "not reproduced", evidence)


def _claim_beats(
    method: str, label: str, sparsities: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9)
) -> Callable[[pd.DataFrame, pd.DataFrame], Verdict]:
    def check(rows: pd.DataFrame, probes: pd.DataFrame) -> Verdict:
        low = f"{min(sparsities):g}"
        claim = (
            f"MP+REFLOW matches or beats {label} ({method}, no repair) at every sparsity ≥ {low}."
        )
        test = f"mp+reflow top-1 ≥ {method} top-1 − 0.5 at each sparsity {low}–0.9 measured"
        pairs = []
        for s in sparsities:
            a, b = _top1(rows, method, "none", s), _top1(rows, "mp", "reflow", s)
            if a is not None and b is not None:
                pairs.append((s, a, b))
        if not pairs:
            return Verdict(claim, test, "not measured", f"no {method} and mp+reflow rows")
        ok = all(b >= a - 0.5 for _, a, b in pairs)
        evidence = "; ".join(f"{s:g}: {method} {a:.2f} vs {b:.2f}" for s, a, b in pairs)
        return Verdict(claim, test, "reproduced" if ok else "not reproduced", evidence)

    return check


def _claim_selection(
    method: str, label: str, threshold: float, paper_text: str = "0.0018% on ResNet-20"
) -> Callable[..., Verdict]:
    def check(rows: pd.DataFrame, probes: pd.DataFrame) -> Verdict:
        claim = (
            f"{label} alone picks nearly the MP mask (paper, Appendix C: MP vs CHITA {paper_text})."
        )
        test = (
            f"normalised Hamming distance mp vs {method} < {100 * threshold:g}% at every "
            "sparsity measured"
        )
        if "hamming_vs_mp" not in rows:
            return Verdict(claim, test, "not measured", "rows carry no hamming_vs_mp")
        sel = rows[(rows.method == method) & rows.hamming_vs_mp.notna()]
        if sel.empty:
            return Verdict(claim, test, "not measured", f"no {method} rows")
        by = sel.groupby("sparsity").hamming_vs_mp.mean()
        ok = bool((by < threshold).all())
        evidence = "; ".join(f"{s:g}: {100 * d:.4f}%" for s, d in by.items())
        return Verdict(claim, test, "reproduced" if ok else "not reproduced", evidence)

    return check


def _claim_selection_accuracy(rows: pd.DataFrame, probes: pd.DataFrame) -> Verdict:
    claim = (
        "CHITA's selection alone (CHITA-S) is about as accurate as MP: the update is what helps."
    )
    test = "|chita_s − mp| ≤ 1 point of top-1 (no repair) at every sparsity measured"
    pairs = [
        (s, a, b)
        for s in sorted(rows.sparsity.unique())
        if (a := _top1(rows, "chita_s", "none", s)) is not None
        and (b := _top1(rows, "mp", "none", s)) is not None
    ]
    if not pairs:
        return Verdict(claim, test, "not measured", "no chita_s and mp rows")
    ok = all(abs(a - b) <= 1.0 for _, a, b in pairs)
    evidence = "; ".join(f"{s:g}: {a:.2f} vs {b:.2f}" for s, a, b in pairs)
    return Verdict(claim, test, "reproduced" if ok else "not reproduced", evidence)


def _claim_reflow_closes_the_gap(rows: pd.DataFrame, probes: pd.DataFrame) -> Verdict:
    claim = "With REFLOW, MP and CHITA-S come close to CHITA (CHITA-U) (Fig. 10)."
    test = (
        "at each sparsity ≥ 0.7: mp+reflow and chita_s+reflow within 2 points of "
        "chita_u+reflow, and the spread of the three smaller than without REFLOW"
    )
    evidence, ok, seen = [], True, False
    for s in (0.7, 0.8, 0.9):
        values = {
            (m, r): _top1(rows, m, r, s)
            for m in ("mp", "chita_s", "chita_u")
            for r in ("none", "reflow")
        }
        if any(v is None for v in values.values()):
            continue
        seen = True
        with_r = [values[(m, "reflow")] for m in ("mp", "chita_s", "chita_u")]
        without = [values[(m, "none")] for m in ("mp", "chita_s", "chita_u")]
        close = all(abs(v - with_r[2]) <= 2.0 for v in with_r[:2])
        tighter = max(with_r) - min(with_r) < max(without) - min(without)
        ok &= close and tighter
        evidence.append(
            f"{s:g}: with REFLOW {'/'.join(f'{v:.2f}' for v in with_r)} (spread "
            f"{max(with_r) - min(with_r):.2f}), without {'/'.join(f'{v:.2f}' for v in without)} "
            f"(spread {max(without) - min(without):.2f})"
        )
    if not seen:
        return Verdict(
            claim,
            test,
            "not measured",
            "no mp/chita_s/chita_u rows with and without REFLOW at 0.7–0.9",
        )
    return Verdict(claim, test, "reproduced" if ok else "not reproduced", "; ".join(evidence))


CLAIMS = [
    _claim_collapse(0.9, "ResNet-20: 11.79% at 0.9"),
    _claim_variance(0.9),
    _claim_recovery((0.8, 0.9), "54.0→78.5 at 0.8, 11.8→49.2 at 0.9"),
    _claim_beats("wf_u", "WoodFisher"),
    _claim_beats("wf_s", "WoodFisher selection"),
    _claim_beats("mp_u", "MP with the OBS update"),
    _claim_beats("cbs_u", "CBS"),
    _claim_beats("chita_u", "CHITA", sparsities=(0.7, 0.8, 0.9)),
    _claim_beats("mfac", "M-FAC"),
    _claim_selection("chita_s", "CHITA's selection", 0.001),
    _claim_selection_accuracy,
    _claim_reflow_closes_the_gap,
    _claim_selection("wf_s", "WoodFisher selection", 0.05),
]


#: The paper's MobileNet claims (Table 1's ImageNet MobileNet row; Appendix C), tested on our
#: CIFAR MobileNetV1.
MOBILENET_CLAIMS = [
    _claim_collapse(0.8, "MobileNet on ImageNet: 0.11% at 0.8"),
    _claim_variance(0.8),
    _claim_recovery((0.8,), "MobileNet 0.11→43.37 at 0.8"),
    _claim_reflow_never_hurts,
    _claim_beats("wf_u", "WoodFisher"),
    _claim_beats("chita_u", "CHITA", sparsities=(0.7, 0.8, 0.9)),
    _claim_selection("chita_s", "CHITA's selection", 0.001, "0.0095% on MobileNet"),
    _claim_selection_accuracy,
]
CLAIMS_BY_MODEL = {"resnet20": CLAIMS, "mobilenet_v1": MOBILENET_CLAIMS}


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
    results: pd.DataFrame, probes: pd.DataFrame, model: str = "resnet20"
) -> list[Verdict]:
    return check_claims(*claim_rows(results, probes, model), model)


def check_claims(rows: pd.DataFrame, probes: pd.DataFrame, model: str) -> list[Verdict]:
    """The model's claims tested on its claim rows (`claim_rows`)."""
    return [check(rows, probes) for check in CLAIMS_BY_MODEL[model]]


def _paper_table_section(results: pd.DataFrame) -> list[str]:
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
        for title, text in table_for(resnet, layout=layout):
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
    """Our MobileNetV1 (CIFAR) MP and MP+REFLOW beside the paper's ImageNet MobileNet row."""
    rows, _ = claim_rows(results, pd.DataFrame(), "mobilenet_v1")
    rows = rows[rows.method == "mp"]
    if rows.empty:
        return []
    ours = rows.pivot_table(index="sparsity", columns="repair", values="top1", aggfunc="mean")
    ours = ours.rename(columns={"none": "MP (ours)", "reflow": "REFLOW (ours)"})
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
    for model in measured:
        rows, model_probes = claim_rows(results, probes, model)
        verdicts = check_claims(rows, model_probes, model)
        lines += [f"## Claims on {model}", ""]
        options = claim_variants(rows)
        if options:
            named = "; ".join(f"{m} with {t}" for m, t in options.items())
            lines += [
                f"Methods tested with non-default options (as their sweep ran them): {named}.",
                "",
            ]
        lines += ["| claim | test | outcome | evidence |", "|---|---|---|---|"]
        lines += [f"| {v.claim} | {v.test} | **{v.outcome}** | {v.evidence} |" for v in verdicts]
        lines += [""]
    for title, text in table_for(results, by_repair=True):
        lines += [
            f"## Top-1 (%): {title}",
            "",
            "Best per row in bold; mean ± std where several "
            "seeds exist; a bracketed tag marks a non-default configuration.",
            "",
            text,
            "",
        ]
    lines += _paper_table_section(results)
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
