"""Methods that misbehave on purpose, loaded as a plugin (``--plugin plugin_methods``) by the
executor tests: each one appends a line to $REFLOW_TEST_MARKER every time it starts, so a test can
count how often a task ran."""

from __future__ import annotations

import os

from reflow.baselines import Method, PruneContext, PruneResult, register
from reflow.baselines.magnitude import GlobalMagnitude


def _mark(name: str, sparsity: float) -> None:
    marker = os.environ.get("REFLOW_TEST_MARKER")
    if marker:
        with open(marker, "a") as f:
            f.write(f"{name} {sparsity} {os.getpid()}\n")


@register
class FailsAtNinety(Method):
    """Magnitude pruning that raises at sparsity 0.9."""

    name = "test_fail"

    def prune(self, model, sparsity: float, ctx: PruneContext) -> PruneResult:
        _mark(self.name, sparsity)
        if sparsity == 0.9:
            raise RuntimeError("failing on purpose")
        return GlobalMagnitude().prune(model, sparsity, ctx)


@register
class KillsItsWorkerAtNinety(Method):
    """Magnitude pruning that ends its whole process at sparsity 0.9 (a segfault, an OOM kill)."""

    name = "test_crash"

    def prune(self, model, sparsity: float, ctx: PruneContext) -> PruneResult:
        _mark(self.name, sparsity)
        if sparsity == 0.9:
            os._exit(3)
        return GlobalMagnitude().prune(model, sparsity, ctx)
