"""Pruning methods (adapters), importable as ``reflow.baselines``.

Each module registers its methods; add a new method by writing a module and importing it here.
"""

from reflow.baselines import magnitude, random_pruning  # noqa: F401  (registers methods)
from reflow.baselines.base import Method, NoConfig, PruneContext, PruneResult, option
from reflow.baselines.registry import get_method, get_method_class, list_methods, register

__all__ = [
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
