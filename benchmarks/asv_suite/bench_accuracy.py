"""Accuracy history: asv treats lower as better, so these track the top-1 *error* (100 − top-1, %)
of every registered method, with and without REFLOW, on resnet20 + cifar10-jpeg."""

from __future__ import annotations

from .common import method_names, real_setup, settings


class Accuracy:
    params = (method_names(), ["none", "reflow"], [0.8])
    param_names = ["method", "repair", "sparsity"]
    number, repeat, rounds, warmup_time = 1, 1, 1, 0
    timeout = 900

    def setup(self, method: str, repair: str, sparsity: float) -> None:
        self.env = real_setup()

    def track_top1_error(self, method: str, repair: str, sparsity: float) -> float:
        from reflow import baselines
        from reflow.harness import evaluate_phase, repair_phase, select_phase
        from reflow.timing import PhaseTimer

        model, _ = select_phase(
            self.env, baselines.get_method(method), sparsity, 0, settings(), PhaseTimer()
        )
        repair_phase(self.env, model, repair, 0, settings())
        top1 = evaluate_phase(self.env, model, settings(probe_samples=0)).top1
        return round(100.0 - top1, 4)

    track_top1_error.unit = "%"
