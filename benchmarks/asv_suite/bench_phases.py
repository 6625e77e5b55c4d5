"""Timed phases: selection of the methods that need no data (asv's statistics over repeats, one
run being a second or less), every repair against the bare forward passes it needs (timed once
each: seconds per run), and the evaluation with and without the variance probe. Parameterised
from the registries."""

from __future__ import annotations

import copy

from .common import data_free_methods, real_setup, repair_names, settings

SPARSITY = 0.7


class SelectPhase:
    """``select`` of the data-free methods on resnet20 + cifar10-jpeg."""

    params = (data_free_methods(),)
    param_names = ["method"]
    number, repeat, rounds, warmup_time = 1, 3, 1, 0

    def setup(self, method: str) -> None:
        from reflow import baselines
        from reflow.timing import PhaseTimer

        self.env = real_setup()
        self.method = baselines.get_method(method)
        self.phase_timer = PhaseTimer()  # not `timer`: asv takes that attribute as its clock

    def time_select(self, method: str) -> None:
        from reflow.harness import select_phase

        select_phase(self.env, self.method, SPARSITY, 0, settings(), self.phase_timer)


class RepairPhase:
    """Every repair on an mp-pruned resnet20 over the paper's 50 × 128 calibration images, each
    timed once in one shared set-up (asv's ``setup_cache``) beside a bare eval-mode forward pass
    over the same images. A repair takes seconds, so asv's repeats (and a separate timed body
    beside the ratio) had doubled and redoubled the family's cost for no added resolution."""

    params = (repair_names(),)
    param_names = ["repair"]
    number, repeat, rounds, warmup_time = 1, 1, 1, 0

    def setup_cache(self) -> dict[str, float]:
        import torch

        from reflow import baselines
        from reflow.harness import calibration_batches, select_phase
        from reflow.repairs import RepairContext, get_repair
        from reflow.timing import PhaseTimer

        env = real_setup()
        pruned, _ = select_phase(
            env, baselines.get_method("mp"), SPARSITY, 0, settings(), PhaseTimer()
        )
        batches = list(calibration_batches(env, 0, settings()))
        ctx = RepairContext(calibration=lambda: batches, dense_model=env.model)
        measured = PhaseTimer()
        with measured.phase("forward"), torch.no_grad():
            for x, _ in batches:
                pruned(x)
        for repair in repair_names():
            model = copy.deepcopy(pruned)
            with measured.phase(repair):
                get_repair(repair).repair(model, ctx)
        return measured.seconds

    setup_cache.timeout = 900

    def track_repair_seconds(self, measured: dict, repair: str) -> float:
        return round(measured[repair], 4)

    track_repair_seconds.unit = "seconds"

    def track_repair_over_forward_ratio(self, measured: dict, repair: str) -> float:
        """Repair time / bare forward time over the same images (machine speed cancels)."""
        return round(measured[repair] / measured["forward"], 4)

    track_repair_over_forward_ratio.unit = "ratio"


class EvaluatePhase:
    """``evaluate``: the full cifar10-jpeg test split with and without the variance probe."""

    params = ([0, 2000, 10000],)
    param_names = ["probe_samples"]
    number, repeat, rounds, warmup_time = 1, 1, 1, 0

    def setup(self, probe_samples: int) -> None:
        self.env = real_setup()

    def time_evaluate(self, probe_samples: int) -> None:
        from reflow.harness import evaluate_phase

        evaluate_phase(self.env, self.env.model, settings(probe_samples=probe_samples))
