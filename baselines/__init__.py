"""Pruning methods (adapters), importable as ``reflow.baselines``.

Each module registers its methods; add a new method by writing a module and importing it here.
"""

from reflow.baselines import (  # noqa: F401  (importing a module registers its methods)
    magnitude,
    min_threshold,
    random_pruning,
    second_order,
    snip,
)
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
