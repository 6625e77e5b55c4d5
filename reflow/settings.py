"""Harness settings shared by every row of a run (the options that are not a method's or a
repair's own). Non-default values enter a row's identity; defaults never do, so a setting added
later with a default that changes nothing keeps every stored row's identity."""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields

from reflow.calib_sources import check_source
from reflow.errors import ReflowError
from reflow.masks import SCOPES, Pattern
from reflow.options import check, option

#: How the dense model's BatchNorm statistics are set before pruning.
DENSE_BN = {
    "checkpoint": "as stored in the checkpoint (default)",
    "train": "re-estimated by one train-mode pass over the train split, momentum 0.1, as CHITA's "
    "and M-FAC's ResNet-20 scripts do before pruning",
}


@dataclass(frozen=True)
class Settings:
    """Options shared by every row of a run. Each field is declared once, with its help, choices
    and bounds: the CLI flags of `reflow run` and `reflow prune`, the keys of a sweep file's
    ``[experiment.settings]`` and ``reflow list -v`` are generated from these fields."""

    scope: str = option(
        "all", "prunable weights (all: conv + linear; blocks; chita)", choices=SCOPES
    )
    calib_batches: int = option(50, "calibration batches for repairs", minimum=1)
    calib_batch_size: int = option(128, "calibration batch size", minimum=1)
    calib_augment: bool = option(
        False,
        "augment calibration images as the CIFAR training recipe (random crop with 4 pixels of "
        "zero padding, flip), as the batches the checkpoint's BN statistics came from",
    )
    calib_source: str = option(
        "train",
        "where calibration images come from: train (the train split), shifted:NAME:SEVERITY "
        "(the train draw through a CIFAR-10-C corruption: gaussian_noise, gaussian_blur, "
        "contrast, brightness, jpeg; severity 1-5) or noise (standard-normal images); test is "
        "refused",
    )
    recalibrate_layers: str = option(
        "all", "normalisation layers a repair works on: all, first:K or last:K"
    )
    eval_batch_size: int = option(500, "test images per forward pass", minimum=1)
    eval_samples: int = option(
        0, "evaluate the first N test images of the fixed class-mixed order (0: all)", minimum=0
    )
    probe_samples: int = option(2000, "test inputs the variance probe covers (0: off)", minimum=0)
    dense_bn: str = option(
        "checkpoint",
        "dense BN statistics before pruning: as stored (checkpoint), or re-estimated on the "
        "train split (train), as CHITA's and M-FAC's ResNet-20 scripts do",
        choices=tuple(DENSE_BN),
    )
    pattern: str = option(
        "", "keep N of every M consecutive input weights (e.g. 2:4); sparsity is 1 - N/M"
    )
    #: Per-method and per-repair option overrides as strings: ``{"wf_u": {"num_grads": "200"}}``.
    options: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.options, dict) or not all(
            isinstance(v, dict) for v in self.options.values()
        ):
            raise ReflowError(f"options must be a table of tables, got {self.options!r}")
        check(self)
        check_source(self.calib_source)
        where, _, count = self.recalibrate_layers.partition(":")
        if self.recalibrate_layers != "all" and (
            where not in {"first", "last"} or not count.isdigit()
        ):
            raise ReflowError(
                "recalibrate_layers must be 'all', 'first:K' or 'last:K', got "
                f"{self.recalibrate_layers!r}"
            )
        if self.pattern:
            Pattern.parse(self.pattern)

    @property
    def parsed_pattern(self) -> Pattern | None:
        return Pattern.parse(self.pattern) if self.pattern else None


def setting_fields() -> list[Field]:
    """The declared settings (every field but ``options``)."""
    return [f for f in fields(Settings) if f.name != "options"]
