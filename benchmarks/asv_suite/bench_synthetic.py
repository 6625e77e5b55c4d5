"""Selection and repair on torchvision ImageNet architectures with synthetic data (no download:
random init), for the methods that need no data, and REFLOW on a few 224×224 batches."""

from __future__ import annotations

import copy

from .common import SYNTHETIC_MODELS, data_free_methods, settings


class SyntheticSelect:
    params = (list(SYNTHETIC_MODELS), data_free_methods())
    param_names = ["model", "method"]
    number, repeat, rounds, warmup_time = 1, 1, 1, 0
    timeout = 600

    def setup(self, model: str, method: str) -> None:
        from reflow import baselines
        from reflow.harness import load_setup

        self.env = load_setup(model, "synthetic")
        self.method = baselines.get_method(method)

    def _select(self) -> None:
        from reflow.harness import select_phase
        from reflow.timing import PhaseTimer

        select_phase(self.env, self.method, 0.8, 0, settings(), PhaseTimer())

    def time_select(self, model: str, method: str) -> None:
        self._select()


class SyntheticRepair:
    params = (list(SYNTHETIC_MODELS),)
    param_names = ["model"]
    number, repeat, rounds, warmup_time = 1, 2, 1, 0
    timeout = 600

    def setup(self, model: str) -> None:
        from reflow.harness import calibration_batches, load_setup

        self.env = load_setup(model, "synthetic")
        small = settings(calib_batches=4, calib_batch_size=16)
        self.batches = list(calibration_batches(self.env, 0, small))

    def time_reflow(self, model: str) -> None:
        from reflow.recalibrate import reflow

        reflow(copy.deepcopy(self.env.model), self.batches)
