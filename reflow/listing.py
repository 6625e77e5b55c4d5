"""What ``reflow list`` shows: every registry (methods, repairs, executors, models, datasets)
and the harness settings, with options, choices and bounds when verbose."""

from __future__ import annotations

from reflow import baselines
from reflow.calib_sources import SOURCES
from reflow.data import DATASETS
from reflow.executors import EXECUTORS
from reflow.options import describe_config
from reflow.repairs import REPAIRS
from reflow.seeds import method_seed_controls, repair_seed_controls
from reflow.settings import setting_fields
from reflow.zoo import MODELS


def registered(verbose: bool = False) -> list[str]:
    """The lines of ``reflow list`` (``verbose``: every option with its default and help)."""
    lines = ["methods:"]
    for name in baselines.list_methods():
        cls = baselines.get_method_class(name)
        needs = ", ".join(sorted(cls.needs)) or "nothing"
        extras = "; N:M patterns" if cls.supports_pattern else ""
        seed = ", ".join(method_seed_controls(cls)) or "nothing"
        lines.append(
            f"  {name:<12} {cls.summary}  [needs {needs}; updates weights: "
            f"{cls.updates_weights}{extras}; the seed controls: {seed}]"
        )
        lines += _options(cls.Config, f"--set {name}.", verbose)
    lines.append("repairs:")
    for name, cls in REPAIRS.items():
        needs = ", ".join(sorted(cls.needs)) or "nothing"
        seed = ", ".join(repair_seed_controls(cls)) or "nothing"
        lines.append(f"  {name:<16} {cls.summary}  [needs {needs}; the seed controls: {seed}]")
        lines += _options(cls.Config, f"--set {name}.", verbose)
    lines.append("executors:")
    for name, cls in EXECUTORS.items():
        extra = f' (pip install -e ".[{cls.extra}]")' if cls.extra else ""
        lines.append(f"  {name:<10} {cls.summary}{extra}")
        lines += _options(cls.Config, "--executor-set ", verbose)
    lines.append("models:")
    for name, entry in MODELS.items():
        ckpts = ", ".join(f"{c.name} ({c.file})" for c in entry.checkpoints)
        lines.append(f"  {name:<17} {entry.summary}")
        lines.append(
            f"      {entry.num_classes} classes, {entry.input_size}x{entry.input_size} input;"
            f" checkpoints: {ckpts}"
        )
    lines.append("datasets:")
    for name, entry in DATASETS.items():
        lines.append(f"  {name:<17} {entry.summary}")
        if verbose:
            size = f"{entry.input_size}x{entry.input_size}" if entry.input_size else "the model's"
            classes = entry.num_classes or "the model's"
            lines.append(f"      {classes} classes, {size} images")
            lines.append(f"      normalisation: {entry.normalisation}")
    lines.append("calibration sources (--calib-source):")
    lines += [f"  {name:<22} {text}" for name, text in SOURCES.items()]
    lines.append("settings (flags of run and prune; keys of [experiment.settings] in sweep files):")
    for f in setting_fields():
        valid = f.metadata["choices"]
        choices = f" ({', '.join(map(str, valid))})" if valid else ""
        lines.append(f"  --{f.name.replace('_', '-'):<21} default {f.default!r}{choices}")
        if verbose:
            lines.append(f"      {f.metadata['help']}")
    return lines


def _options(config: type, prefix: str, verbose: bool) -> list[str]:
    return [f"      {prefix}{line}" for line in describe_config(config)] if verbose else []
