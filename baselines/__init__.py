"""Pruning methods (adapters), importable as ``reflow.baselines``.

Each module registers its methods; add a new method by writing a module and importing it here.
"""

# Importing a module registers its methods; the order here is the order of `reflow list`, of
# the columns of method tables and of the colours of figures: the classic baselines first.
# isort: off
from reflow.baselines import magnitude, min_threshold, random_pruning  # noqa: F401
from reflow.baselines import second_order, snip  # noqa: F401
from reflow.baselines import mfac, chita, cbs  # noqa: F401
from reflow.baselines import obc, sparsegpt, wanda, alps, snows  # noqa: F401
from reflow.baselines import structured, osscar  # noqa: F401

# isort: on
from reflow.baselines.base import Method, NoConfig, PruneContext, PruneResult, option
from reflow.baselines.registry import METHODS, get_method, get_method_class, list_methods, register

__all__ = [
    "METHODS",
    "Method",
    "NoConfig",
    "PruneContext",
    "PruneResult",
    "get_method",
    "get_method_class",
    "list_methods",
    "option",
    "register",
]
