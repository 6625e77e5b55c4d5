"""Shared set-up for the asv benchmarks: the harness's own phase functions, no copies."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

#: asv tracks speed and accuracy across commits; the heaviest methods run with smaller but still
#: realistic settings so that one commit's run stays within minutes on a 2-core CPU (their
#: paper-scale timings are in the sweep rows and the README). SNOWS runs the CPU settings of
#: configs/paper/frontier.toml (the reference's K = 20 and 500 CG steps are GPU work).
ASV_METHOD_OPTIONS: dict[str, dict[str, str]] = {
    "chita_s": {"num_grads": "250"},
    "chita_u": {"num_grads": "250"},
    "cbs_s": {"num_grads": "250"},
    "cbs_u": {"num_grads": "250"},
    "mfac": {"steps": "4"},
    "snows": {
        "k_step": "8",
        "batch_size": "128",
        "samples": "256",
        "newton_steps": "1",
        "cg_iter": "50",
    },
}
REAL_MODEL, REAL_DATASET = "resnet20", "cifar10-jpeg"
#: The depthwise network of the paper's MobileNet rows, tracked with the data-free methods.
DEPTHWISE_MODEL = "mobilenet_v1"
SYNTHETIC_MODELS = ("resnet50", "mobilenet_v2")
#: Accuracy tracks read the first 2,000 images of the fixed class-mixed test order (the same
#: images at every commit); the reference gates check the whole split.
TRACK_EVAL_SAMPLES = 2000


def ensure_home() -> None:
    """Point REFLOW_HOME at ../shared beside the checkout unless the caller set it."""
    if "REFLOW_HOME" not in os.environ:
        for parent in Path(__file__).resolve().parents:
            if (parent.parent / "shared" / "models").is_dir():
                os.environ["REFLOW_HOME"] = str(parent.parent / "shared")
                break


def method_names() -> list[str]:
    from reflow.baselines import list_methods

    return list_methods()


def repair_names() -> list[str]:
    """Every registered repair that does something (all but ``none``)."""
    from reflow.repairs import list_repairs

    return [r for r in list_repairs() if r != "none"]


def data_free_methods() -> list[str]:
    from reflow.baselines import get_method_class, list_methods

    return [m for m in list_methods() if not get_method_class(m).needs]


@cache
def real_setup(model: str = REAL_MODEL):
    from reflow.harness import load_setup

    ensure_home()
    return load_setup(model, REAL_DATASET)


def settings(**changes):
    from reflow.settings import Settings

    return Settings(options=ASV_METHOD_OPTIONS, **changes)
