"""Timed phases (asv's statistics over repeats) where one run is seconds or less: selection of
the methods that need no data, every repair against the bare forward passes it needs, and the
evaluation with and without the variance probe. Parameterised from the registries."""

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
    """Every repair on an mp-pruned resnet20 over the paper's 50 × 128 calibration images: one
    pruned model and one draw of images (asv's ``setup_cache``) for every repair and repeat."""

    params = (repair_names(),)
    param_names = ["repair"]
    number, repeat, rounds, warmup_time = 1, 2, 1, 0
    timeout = 600

    def setup_cache(self) -> dict:
        from reflow import baselines
        from reflow.harness import calibration_batches, select_phase
        from reflow.timing import PhaseTimer

        env = real_setup()
        pruned, _ = select_phase(
            env, baselines.get_method("mp"), SPARSITY, 0, settings(), PhaseTimer()
        )
        batches = list(calibration_batches(env, 0, settings()))
        return {"dense": env.model, "pruned": pruned, "batches": batches}

    setup_cache.timeout = 600

    @staticmethod
    def _repair(shared: dict, repair: str, model) -> None:
        """The repair alone, on the calibration batches drawn in the shared set-up."""
        from reflow.repairs import RepairContext, get_repair

        ctx = RepairContext(calibration=lambda: shared["batches"], dense_model=shared["dense"])
        get_repair(repair).repair(model, ctx)

    def time_repair(self, shared: dict, repair: str) -> None:
        self._repair(shared, repair, copy.deepcopy(shared["pruned"]))

    def track_repair_over_forward_ratio(self, shared: dict, repair: str) -> float:
        """Repair time / bare eval-mode forward time over the same images, measured together."""
        import time

        import torch

        model = copy.deepcopy(shared["pruned"])
        start = time.perf_counter()
        with torch.no_grad():
            for x, _ in shared["batches"]:
                model(x)
        forward = time.perf_counter() - start
        start = time.perf_counter()
        self._repair(shared, repair, model)
        return (time.perf_counter() - start) / forward

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
