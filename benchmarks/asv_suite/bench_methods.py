"""Every registered method, selected once at sparsity 0.8 on resnet20 + cifar10-jpeg (one set-up
for all of them, asv's ``setup_cache``), and read by every track: selection and update seconds,
the memory the selection adds, and the top-1 error (asv treats lower as better) with and without
REFLOW. Methods come from the registry, so a new adapter is tracked without editing this file.
The data-free methods are tracked the same way on MobileNetV1 (depthwise convolutions), where
one-shot pruning collapses hardest.
"""

from __future__ import annotations

from .common import (
    DEPTHWISE_MODEL,
    REAL_MODEL,
    TRACK_EVAL_SAMPLES,
    data_free_methods,
    method_names,
    real_setup,
    settings,
)

SPARSITY = 0.8


def measure_methods(model: str, methods: list[str]) -> dict[str, dict[str, float]]:
    from reflow import baselines
    from reflow.harness import evaluate_phase, repair_phase, select_phase
    from reflow.timing import PhaseTimer

    env = real_setup(model)
    quiet = settings(probe_samples=0, eval_samples=TRACK_EVAL_SAMPLES)
    out = {}
    for name in methods:
        timer = PhaseTimer()
        method = baselines.get_method(name, quiet.options.get(name))
        model, result = select_phase(env, method, SPARSITY, 0, quiet, timer)
        row = {
            "select": timer.seconds["select"],
            "update": timer.seconds.get("update", 0.0),
            "memory": float(result.info["select_mem_mb"]),
            "error_none": 100.0 - evaluate_phase(env, model, quiet).top1,
        }
        repair_phase(env, model, "reflow", 0, quiet)
        row["error_reflow"] = 100.0 - evaluate_phase(env, model, quiet).top1
        out[name] = row
    return out


class Methods:
    params = (method_names(),)
    param_names = ["method"]
    number, repeat, rounds, warmup_time = 1, 1, 1, 0
    timeout = 120

    def setup_cache(self) -> dict[str, dict[str, float]]:
        return measure_methods(REAL_MODEL, method_names())

    setup_cache.timeout = 3600

    def track_select_seconds(self, measured: dict, method: str) -> float:
        return round(measured[method]["select"], 4)

    track_select_seconds.unit = "seconds"

    def track_update_seconds(self, measured: dict, method: str) -> float:
        return round(measured[method]["update"], 4)

    track_update_seconds.unit = "seconds"

    def track_select_memory_mb(self, measured: dict, method: str) -> float:
        return round(measured[method]["memory"], 1)

    track_select_memory_mb.unit = "MB"

    def track_top1_error(self, measured: dict, method: str) -> float:
        return round(measured[method]["error_none"], 4)

    track_top1_error.unit = "%"

    def track_top1_error_reflow(self, measured: dict, method: str) -> float:
        return round(measured[method]["error_reflow"], 4)

    track_top1_error_reflow.unit = "%"


class DepthwiseMethods(Methods):
    """The same tracks for the data-free methods on MobileNetV1."""

    params = (data_free_methods(),)

    def setup_cache(self) -> dict[str, dict[str, float]]:
        return measure_methods(DEPTHWISE_MODEL, data_free_methods())

    setup_cache.timeout = 1200
