"""``reflow prune``: one zoo model pruned, repaired, evaluated and saved with its card, through
the same harness phases as every sweep row."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from reflow import baselines
from reflow.api import check_save_target, save_pruned
from reflow.grid import Experiment, Grid
from reflow.harness import (
    dense_evaluation,
    evaluate_phase,
    load_setup,
    pick_device,
    repair_phase,
    select_phase,
)
from reflow.masks import sparsity_of
from reflow.options import non_default
from reflow.plan import validate
from reflow.provenance import git_commit
from reflow.repairs import get_repair
from reflow.settings import Settings
from reflow.timing import PhaseTimer
from reflow.zoo import resolve_checkpoint


def prune_and_save(
    model: str,
    dataset: str,
    checkpoint: str | None,
    method: str,
    sparsity: float,
    repair: str,
    settings: Settings,
    seed: int,
    save: Path,
    save_masks: bool = False,
    evaluate: bool = True,
    device: str = "auto",
    data_root: Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Check everything (the save target first), run the phases, write the files, return the
    card."""
    grid = Grid((model,), (dataset,), (method,), (repair,), (sparsity,), (seed,), (checkpoint,))
    ref = resolve_checkpoint(model, checkpoint, dataset)
    check_save_target(save, save_masks, force, keep=[Path(ref.path)] if ref.path else [])
    validate([Experiment("prune", grid, (settings,))], data_root, device)
    setup = load_setup(
        model, dataset, ref, pick_device(device), data_root, dense_bn=settings.dense_bn
    )
    quiet = dataclasses.replace(settings, probe_samples=0)
    chosen = baselines.get_method(method, settings.options.get(method))
    timer = PhaseTimer(setup.device)
    pruned, result = select_phase(setup, chosen, sparsity, seed, settings, timer)
    with timer.phase("repair"):
        calib = repair_phase(setup, pruned, repair, seed, settings)
    report = sparsity_of(result.masks)
    card: dict[str, Any] = {
        "model": model,
        "checkpoint": ref.key,
        "checkpoint_label": ref.label,
        "checkpoint_sha256": ref.sha256,
        "dataset": dataset,
        "method": method,
        "method_options": non_default(chosen.config),
        "repair": repair,
        "repair_options": non_default(get_repair(repair, settings.options.get(repair)).config),
        "sparsity": sparsity,
        "sparsity_achieved": report.sparsity,
        "prunable_params": report.total,
        "scope": settings.scope,
        "pattern": settings.pattern,
        "dense_bn": settings.dense_bn,
        "structured": result.model is not None,
        "calibration_samples": calib,
        "seed": seed,
        "seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
        "git_commit": git_commit(),
        "torch": __import__("torch").__version__,
    }
    if evaluate:
        card["dense_top1"] = dense_evaluation(setup, quiet).top1
        card["pruned_top1"] = evaluate_phase(setup, pruned, quiet).top1
    masks = result.masks if save_masks else None
    card["written"] = [str(p) for p in save_pruned(pruned, save, card, masks, overwrite=force)]
    return card
