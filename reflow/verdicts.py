"""The paper's claims, each a stated test on stored rows, decided from intervals rather than from
point estimates and fixed tolerances.

A comparative claim is a statement about a difference of top-1, A − B, at every sparsity it
names, with the bounds it must lie in (``beats``: above 0; "up to 2%": within ±2). Per sparsity
the difference's 95% interval decides: **reproduced** when the interval lies inside the claimed
bounds, **not reproduced** when it lies wholly outside them, **indistinguishable** when it
straddles a bound. The interval is the paired two-level bootstrap of `reflow.uncertainty` when the
rows kept their per-example outcomes, else a normal approximation from the accuracies, the seed
spread and the number of test examples (unpaired, so wider; said in the evidence). A claim over
several sparsities is reproduced when every one is, not reproduced when any one is not,
**partly reproduced** when the rest are indistinguishable; it is **incomplete** when a sparsity
it names has no rows, **not measured** when none has. Bounds that are not the paper's are
labelled as ours in the test text, and claims that are not the paper's say so (``source``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pandas as pd
from scipy.stats import spearmanr

from reflow import paper
from reflow.outcomes import Outcomes
from reflow.stats import accuracy_variance
from reflow.uncertainty import Resamplers, cell_outcomes, paired

INF = math.inf
#: The paper's sparsity range per model (Table 1: 0.4–0.9 on ResNet-20; 0.4–0.8 on MobileNet).
RANGES = {"resnet20": (0.4, 0.5, 0.6, 0.7, 0.8, 0.9), "mobilenet_v1": (0.4, 0.5, 0.6, 0.7, 0.8)}


@dataclass
class Verdict:
    claim: str
    test: str
    outcome: str
    evidence: str
    #: "paper" for the paper's claims; "ours" for the benchmark's own.
    source: str = "paper"


@dataclass
class Evidence:
    """The rows one model's claims are tested on, and what their intervals need."""

    rows: pd.DataFrame
    probes: pd.DataFrame
    outcomes: Mapping[str, Outcomes] = field(default_factory=dict)
    resamplers: Resamplers = field(default_factory=Resamplers)

    def cell(self, method: str, repair: str, sparsity: float) -> pd.DataFrame:
        r = self.rows
        if r.empty:
            return r
        hit = (r.method == method) & (r.repair == repair) & ((r.sparsity - sparsity).abs() < 1e-9)
        return r[hit].sort_values("seed")

    def difference(
        self, a: tuple[str, str], b: tuple[str, str], sparsity: float
    ) -> Difference | None:
        """A − B in top-1 points at ``sparsity`` with its 95% interval (None: a side is
        missing)."""
        left, right = self.cell(*a, sparsity), self.cell(*b, sparsity)
        if left.empty or right.empty:
            return None
        mean_a, mean_b = float(left.top1.mean()), float(right.top1.mean())
        ca, cb = cell_outcomes(left, self.outcomes), cell_outcomes(right, self.outcomes)
        result = paired(ca, cb, self.resamplers) if ca and cb else None
        if result is not None:
            return Difference(sparsity, mean_a, mean_b, result.low, result.high, "paired")
        half = 1.96 * math.sqrt(_variance_of_mean(left) + _variance_of_mean(right))
        gap = mean_a - mean_b
        return Difference(sparsity, mean_a, mean_b, gap - half, gap + half, "normal approx.")


def _variance_of_mean(cell: pd.DataFrame) -> float:
    """`accuracy_variance` of a cell; a row that does not say how many examples it evaluated
    (``eval_samples`` 0 or absent: the whole split) counts CIFAR-10's 10,000."""
    return accuracy_variance(cell.top1.to_numpy(), examples_of(cell))


def examples_of(rows: pd.DataFrame) -> int:
    """How many test examples the rows were evaluated on (10,000 when they do not say)."""
    stated = pd.to_numeric(rows.get("eval_samples"), errors="coerce")
    return int(stated.max()) if stated is not None and stated.max() > 0 else 10_000


@dataclass
class Difference:
    sparsity: float
    a: float
    b: float
    low: float
    high: float
    interval: str  # "paired" bootstrap or "normal approx."

    def decide(self, lower: float, upper: float) -> str:
        """Reproduced when the interval lies in (lower, upper), not reproduced when wholly
        outside, else indistinguishable."""
        if self.low > lower and self.high < upper:
            return "reproduced"
        if self.high <= lower or self.low >= upper:
            return "not reproduced"
        return "indistinguishable"

    def text(self) -> str:
        how = "" if self.interval == "paired" else ", normal approx."
        return (
            f"{self.sparsity:g}: {self.a:.2f} vs {self.b:.2f}, {self.a - self.b:+.2f} "
            f"[{self.low:+.2f}, {self.high:+.2f}{how}]"
        )


def combine(outcomes: list[str]) -> str:
    """One claim's outcome from its per-sparsity outcomes."""
    if "not reproduced" in outcomes:
        return "not reproduced"
    if all(o == "reproduced" for o in outcomes):
        return "reproduced"
    return "partly reproduced" if "reproduced" in outcomes else "indistinguishable"


def difference_claim(
    claim: str,
    a: tuple[str, str],
    b: tuple[str, str],
    lower: float,
    upper: float,
    bounds: str,
    sparsities: tuple[float, ...] | None = None,
    source: str = "paper",
) -> Callable[[Evidence, str], Verdict]:
    """A claim that A − B lies in (lower, upper) at each of ``sparsities`` (default: the paper's
    range for the model)."""

    def check(evidence: Evidence, model: str) -> Verdict:
        named = sparsities or RANGES[model]
        label = lambda pair: pair[0] if pair[1] == "none" else "+".join(pair)  # noqa: E731
        test = (
            f"{label(a)} − {label(b)} in {bounds} at each sparsity "
            f"{named[0]:g}–{named[-1]:g}, by its 95% interval"
        )
        found = {s: evidence.difference(a, b, s) for s in named}
        measured = {s: d for s, d in found.items() if d is not None}
        if not measured:
            return Verdict(claim, test, "not measured", f"no {label(a)} / {label(b)} rows", source)
        per = {s: d.decide(lower, upper) for s, d in measured.items()}
        text = "; ".join(f"{d.text()} {per[s]}" for s, d in measured.items())
        missing = [s for s in named if s not in measured]
        if missing:
            gaps = ", ".join(f"{s:g}" for s in missing)
            return Verdict(claim, test, "incomplete", f"no rows at {gaps}; {text}", source)
        return Verdict(claim, test, combine(list(per.values())), text, source)

    return check


def beats(method: str, label: str, source: str = "paper", note: str = "") -> Callable:
    """MP+REFLOW above ``method`` (no repair); ``note`` says why a claim of ours is not the
    paper's."""
    where = "Table 1" if source == "paper" else f"the benchmark's own claim{note}"
    return difference_claim(
        f"MP+REFLOW outperforms {label} ({method}, no repair) at every sparsity ({where}).",
        ("mp", "reflow"),
        (method, "none"),
        0.0,
        INF,
        "(0, ∞)",
        source=source,
    )


def collapse(sparsity: float, paper_text: str) -> Callable[[Evidence, str], Verdict]:
    def check(evidence: Evidence, model: str) -> Verdict:
        claim = (
            f"Without repair, MP at {sparsity:.0%} sparsity collapses: near-chance accuracy, one "
            f"class dominates ({paper_text})."
        )
        test = (
            f"mp@{sparsity:g} top-1 < 20% and the most common predicted class takes > 50% of "
            "inputs (both bounds ours)"
        )
        match = evidence.cell("mp", "none", sparsity)
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


def variance_decline(sparsity: float) -> Callable[[Evidence, str], Verdict]:
    """Paper Eqs. 20–22: the variance ratio declines, compounding, with depth under MP;
    REFLOW restores it."""

    def check(evidence: Evidence, model: str) -> Verdict:
        claim = (
            "Signal collapse compounds with depth: under MP the normalisation layers' output "
            "variance ratio declines layer after layer (Eqs. 20–22); REFLOW restores it."
        )
        test = (
            f"mp@{sparsity:g}, no repair: Spearman correlation of ratio with depth < 0 (p < 0.05) "
            "and deepest ratio < 0.5; with REFLOW the deepest ratio in [0.5, 1.5] (bounds ours)"
        )
        probes = evidence.probes
        if probes.empty:
            return Verdict(claim, test, "not measured", "no probe rows")
        sel = probes[(probes.method == "mp") & ((probes.sparsity - sparsity).abs() < 1e-9)]
        if not {"none", "reflow"} <= set(sel.repair):
            return Verdict(
                claim, test, "not measured", f"no mp@{sparsity:g} probes with and without REFLOW"
            )
        by = sel.groupby(["repair", "norm_index"]).ratio.mean()
        before, after = by["none"], by["reflow"]
        rho, p = spearmanr(before.index, before.to_numpy())
        ok = rho < 0 and p < 0.05 and before.iloc[-1] < 0.5 and 0.5 <= after.iloc[-1] <= 1.5
        evidence_text = (
            f"no repair: Spearman ρ {rho:.2f} (p {p:.2g}) over {len(before)} layers, ratio "
            f"{before.iloc[0]:.3f} (first) → {before.iloc[-1]:.3f} (deepest); REFLOW deepest "
            f"{after.iloc[-1]:.3f}"
        )
        return Verdict(claim, test, "reproduced" if ok else "not reproduced", evidence_text)

    return check


def recovery(sparsities: tuple[float, ...], paper_text: str) -> Callable[[Evidence, str], Verdict]:
    return difference_claim(
        f"REFLOW recovers most of MP's loss at high sparsity (paper: {paper_text}).",
        ("mp", "reflow"),
        ("mp", "none"),
        20.0,
        INF,
        "(20, ∞) points (bound ours)",
        sparsities,
    )


def selection_distance(method: str, label: str, paper_percent: float, where: str) -> Callable:
    """Appendix C's mask distances, reported beside the paper's figure (no bar of ours)."""

    def check(evidence: Evidence, model: str) -> Verdict:
        claim = f"{label} alone picks nearly the MP mask (Appendix C: MP vs CHITA {where})."
        test = f"normalised Hamming distance mp vs {method}, ours beside the paper's"
        rows = evidence.rows
        if "hamming_vs_mp" not in rows:
            return Verdict(claim, test, "not measured", "rows carry no hamming_vs_mp")
        sel = rows[(rows.method == method) & rows.hamming_vs_mp.notna()]
        if sel.empty:
            return Verdict(claim, test, "not measured", f"no {method} rows")
        by = sel.groupby("sparsity").hamming_vs_mp.mean()
        ours = "; ".join(f"{s:g}: {100 * d:.4f}%" for s, d in by.items())
        return Verdict(claim, test, "reported", f"ours {ours}; paper {paper_percent:g}%")

    return check


def selection_accuracy(method: str, label: str) -> Callable[[Evidence, str], Verdict]:
    return difference_claim(
        f"{label} alone is about as accurate as MP (the paper: within up to 2%): the update is "
        "what helps.",
        (method, "none"),
        ("mp", "none"),
        -2.0,
        2.0,
        "(−2, 2) points (the paper's 2%)",
    )


def closes_the_gap(method: str) -> Callable[[Evidence, str], Verdict]:
    label = "MP" if method == "mp" else "CHITA-S"
    return difference_claim(
        f"With REFLOW, {label} comes close to CHITA (CHITA-U) with REFLOW (Fig. 10).",
        (method, "reflow"),
        ("chita_u", "reflow"),
        -2.0,
        INF,
        "(−2, ∞) points: at most 2 below, or above (bound ours)",
        (0.7, 0.8, 0.9),
    )


CLAIMS = [
    collapse(0.9, "ResNet-20: 11.79% at 0.9"),
    variance_decline(0.9),
    recovery((0.8, 0.9), "54.0→78.5 at 0.8, 11.8→49.2 at 0.9"),
    beats("wf_u", "WoodFisher"),
    beats("cbs_u", "CBS"),
    beats("chita_u", "CHITA"),
    beats("wf_s", "WoodFisher selection", "ours"),
    beats("mp_u", "MP with the OBS update", "ours"),
    beats("mfac", "M-FAC", "ours", note="; the paper compares M-FAC on ResNet-50 only"),
    selection_distance("chita_s", "CHITA's selection", paper.HAMMING_MP_CHITA_PERCENT, "0.0018%"),
    selection_accuracy("wf_s", "WoodFisher's selection (WF-S)"),
    selection_accuracy("cbs_s", "CBS's selection (CBS-S)"),
    selection_accuracy("chita_s", "CHITA's selection (CHITA-S)"),
    closes_the_gap("mp"),
    closes_the_gap("chita_s"),
]

#: The paper's MobileNet claims (Table 1's ImageNet MobileNet row; Appendix C), tested on our
#: CIFAR MobileNetV1.
MOBILENET_CLAIMS = [
    collapse(0.8, "MobileNet on ImageNet: 0.11% at 0.8"),
    variance_decline(0.8),
    recovery((0.8,), "MobileNet 0.11→43.37 at 0.8"),
    difference_claim(
        "REFLOW does not lower MP's accuracy at low sparsity.",
        ("mp", "reflow"),
        ("mp", "none"),
        -0.5,
        INF,
        "(−0.5, ∞) points (practical-equivalence margin ours)",
        (0.4, 0.5, 0.6),
    ),
    beats("wf_u", "WoodFisher"),
    beats("cbs_u", "CBS"),
    beats("chita_u", "CHITA"),
    selection_distance(
        "chita_s", "CHITA's selection", paper.HAMMING_MP_CHITA_MOBILENET_PERCENT, "0.0095%"
    ),
    selection_accuracy("chita_s", "CHITA's selection (CHITA-S)"),
]
CLAIMS_BY_MODEL = {"resnet20": CLAIMS, "mobilenet_v1": MOBILENET_CLAIMS}


def check_claims(evidence: Evidence, model: str) -> list[Verdict]:
    """The model's claims tested on its claim rows (`reflow.report.claim_rows`)."""
    return [check(evidence, model) for check in CLAIMS_BY_MODEL[model]]
