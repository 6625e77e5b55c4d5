"""What a row's seed controls, derived from what its method and repair declare they need, so it
is documented (`reflow list -v`), recorded in every row (``seed_controls``), and a row whose seed
can change nothing is computed once per process and recorded for every seed (``seed_copy_of``).

The seed drives independent streams (`reflow.data.ImageData.train_sample`): the gradient draw
(methods that need ``train_data``), the activation draw (``activations``), the calibration draw
of repairs that need ``calibration`` (and its augmentation with ``calib_augment``), whatever a
method draws itself (`Method.seeded`, e.g. random masks). Test data order, dense-BN
re-estimation and a random-init model's weights (checkpoint ``none``) use fixed seeds.
"""

from __future__ import annotations

from reflow.baselines.base import Method
from reflow.calib_sources import seed_effect
from reflow.repairs import Repair
from reflow.settings import Settings


def method_seed_controls(method: Method | type[Method]) -> list[str]:
    """What the seed changes in ``method``'s selection."""
    found = []
    if "train_data" in method.needs:
        found.append("gradient draw")
    if "activations" in method.needs:
        found.append("activation draw")
    if method.seeded:
        found.append(method.seeded)
    return found


def repair_seed_controls(
    repair: Repair | type[Repair], augment: bool = False, source: str = "train"
) -> list[str]:
    """What the seed changes in ``repair`` (fed from calibration ``source``)."""
    if "calibration" not in repair.needs:
        return []
    if source == "noise" or source.startswith("distilled"):
        return ["calibration draw" + seed_effect(source)]
    extra = (" and its augmentation" if augment else "") + seed_effect(source)
    return ["calibration draw" + extra]


def seed_controls(method: Method, repair: Repair, settings: Settings) -> str:
    """One row's seed effect, as text: ``"nothing"`` when no draw depends on it."""
    found = method_seed_controls(method) + repair_seed_controls(
        repair, settings.calib_augment, settings.calib_source
    )
    return ", ".join(found) or "nothing"
