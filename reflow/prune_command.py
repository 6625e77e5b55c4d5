"""``reflow prune``: one zoo model pruned, repaired, evaluated and saved with its card, through
the run pipeline itself: the grid is planned and validated like `reflow run`'s, the task runs
through `reflow.execute` (the same phases, the same result row), and the card is that row plus
the facts of the files written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from torch import nn

from reflow.api import check_save_target, save_pruned
from reflow.errors import ReflowError
from reflow.execute import ExecEnv, execute
from reflow.grid import Experiment, Grid
from reflow.plan import plan, validate
from reflow.settings import Settings
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
    """Check everything (the save target first), run the one task, write the files, return the
    card: the result row `reflow run` would store, plus the files' facts."""
    grid = Grid((model,), (dataset,), (method,), (repair,), (sparsity,), (seed,), (checkpoint,))
    ref = resolve_checkpoint(model, checkpoint, dataset)
    check_save_target(save, save_masks, force, keep=[Path(ref.path)] if ref.path else [])
    if not evaluate:  # no test images are evaluated, so no probe either
        settings = dataclasses.replace(settings, probe_samples=0)
    experiments = [Experiment("prune", grid, (settings,))]
    validate(experiments, data_root, device)
    (task,) = plan(experiments, set()).tasks
    kept: dict[str, Any] = {}

    def keep(model: nn.Module, masks: dict) -> None:
        kept.update(model=model, masks=masks)

    env = ExecEnv(device, str(data_root) if data_root else None)
    (result,) = execute(task, env, keep=keep, evaluate=evaluate)
    row = result.row
    if row.get("error"):
        raise ReflowError(f"{method}+{repair} failed: {row['error']}")
    card: dict[str, Any] = {
        k: v for k, v in row.items() if k not in {"predictions", "dense_predictions"}
    }
    card["config"] = json.loads(row["config"])
    masks = kept["masks"] if save_masks else None
    written = save_pruned(kept["model"], save, card, masks, overwrite=force)
    card["written"] = [str(p) for p in written]
    return card
