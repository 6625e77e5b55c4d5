"""Row identity: which configuration a result row describes.

A row is keyed by (model, checkpoint, dataset, method, repair, sparsity, seed, config_hash), where
the hash covers only the settings, method options and repair options that differ from their
defaults (OpenLTH's rule). The full configuration is stored beside it as JSON for reading.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from reflow.options import as_dict, non_default
from reflow.settings import Settings

_DEFAULT_SETTINGS = Settings()


def config_hash(config: dict) -> str:
    """Short stable hash of a JSON-serialisable config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


def run_id(key: tuple) -> str:
    """The stable id of a row key (links a result to its probe and layer rows)."""
    return config_hash({"key": list(key)})


def settings_dict(settings: Settings) -> dict[str, Any]:
    return {
        f.name: getattr(settings, f.name)
        for f in dataclasses.fields(settings)
        if f.name != "options"
    }


def identity(method_config: Any, repair_config: Any, settings: Settings) -> dict[str, Any]:
    """The non-default part of a row's configuration: what its hash covers."""
    ident: dict[str, Any] = {
        k: v for k, v in settings_dict(settings).items() if getattr(_DEFAULT_SETTINGS, k) != v
    }
    if changed := non_default(method_config):
        ident["method_config"] = changed
    if changed := non_default(repair_config):
        ident["repair_config"] = changed
    return ident


def full_config(method_config: Any, repair_config: Any, settings: Settings) -> dict[str, Any]:
    """Everything that could change a row's numbers, stored as JSON with the row."""
    return {
        **settings_dict(settings),
        "method_config": as_dict(method_config),
        "repair_config": as_dict(repair_config),
    }


def identity_hash_of_stored_config(method: str, repair: str, stored: dict[str, Any]) -> str:
    """The config hash of a row stored with its full config (any earlier layout): values equal
    to today's defaults are dropped, so rows written before an option existed keep matching."""
    return config_hash(identity_of_stored_config(method, repair, stored))


def identity_of_stored_config(method: str, repair: str, stored: dict[str, Any]) -> dict[str, Any]:
    """The non-default part of a stored full config (see `identity`)."""
    from reflow.baselines import METHODS
    from reflow.repairs import REPAIRS

    ident = {
        k: v
        for k, v in stored.items()
        if k in settings_dict(_DEFAULT_SETTINGS) and getattr(_DEFAULT_SETTINGS, k) != v
    }
    for key, registry, name in (
        ("method_config", METHODS, method),
        ("repair_config", REPAIRS, repair),
    ):
        values = stored.get(key) or {}
        if name in registry:
            defaults = as_dict(registry.get(name).Config())
            values = {k: v for k, v in values.items() if defaults.get(k, object()) != v}
        if values:
            ident[key] = values
    return ident
