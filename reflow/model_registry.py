"""The model registry's shape: a `ModelEntry` (architecture builder, family, classes, published
checkpoints) and a `Checkpoint` (file, sha256, URL, recorded accuracy, recipe), as torchvision's
weights entries carry. Architectures register their entries where they are defined
(`reflow.cifar_resnet`, `reflow.mobilenet`; torchvision's in `reflow.zoo`), as torchvision's
``register_model`` and timm do; `reflow.zoo` is the one entry point that reads them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import nn

from reflow.errors import unknown_name
from reflow.registry import Registry

if TYPE_CHECKING:
    from reflow.data import DatasetEntry

_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
_AKAMASTER_RECIPE = (
    "Idelbayev 2018: SGD lr 0.1 momentum 0.9 wd 1e-4, 200 epochs, random crop + flip, "
    "original CIFAR-10 train split"
)


@dataclass(frozen=True)
class Checkpoint:
    """A published set of weights for one architecture."""

    name: str
    file: str
    #: Full sha256 hex digest, or the prefix that the file name carries when only that is known.
    sha256: str
    url: str | None
    #: Recorded dense top-1 (%) per dataset, with where the figure comes from.
    dense_top1: Mapping[str, float]
    accuracy_source: str
    recipe: str
    #: Loads the file into a state dict whose keys match the architecture.
    loader: str = "state_dict"


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: the registry shape of methods and repairs (name, summary,
    ``applies_to``) for an entry object, plus its builder and published checkpoints."""

    name: str
    family: str  # "cifar" or "imagenet"
    build: Callable[[int], nn.Module]
    num_classes: int
    checkpoints: tuple[Checkpoint, ...] = field(default_factory=tuple)
    summary: str = ""

    @property
    def input_size(self) -> int:
        """Side of the square input images the architecture expects."""
        return 32 if self.family == "cifar" else 224

    def applies_to(self, dataset: DatasetEntry) -> str | None:
        """Why this model cannot be evaluated on ``dataset`` (None: it can): a head with another
        number of classes, or images of another size, would give a meaningless top-1."""
        if dataset.num_classes is not None and dataset.num_classes != self.num_classes:
            return (
                f"{self.name} has {self.num_classes} outputs but {dataset.name} has "
                f"{dataset.num_classes} classes; choose a {dataset.name} model (reflow list)"
            )
        if dataset.input_size is not None and dataset.input_size != self.input_size:
            return (
                f"{self.name} expects {self.input_size}x{self.input_size} images but {dataset.name}"
                f" has {dataset.input_size}x{dataset.input_size}; choose a model for its size"
            )
        return None

    def checkpoint(self, name: str) -> Checkpoint:
        for ckpt in self.checkpoints:
            if ckpt.name == name:
                return ckpt
        valid = [c.name for c in self.checkpoints] + ["none", "a file path"]
        raise unknown_name(f"checkpoint for {self.name}", name, valid)

    def default_checkpoint(self, dataset: str) -> Checkpoint | None:
        """The checkpoint recorded best on ``dataset``, or None (random init) if none is:
        so ``synthetic`` data, recorded by no checkpoint, never triggers a download."""
        recorded = [c for c in self.checkpoints if dataset in c.dense_top1]
        return max(recorded, key=lambda c: c.dense_top1[dataset]) if recorded else None


def akamaster_checkpoints(depth: int, digest: str, published: float) -> tuple[Checkpoint, ...]:
    return (
        Checkpoint(
            name="cifar10",
            file=f"resnet{depth}-{digest[:8]}.th",
            sha256=digest,
            url=f"{_AKAMASTER}resnet{depth}-{digest[:8]}.th",
            dense_top1={"cifar10": published},
            accuracy_source="best_prec1 / README of akamaster/pytorch_resnet_cifar10",
            recipe=_AKAMASTER_RECIPE,
        ),
    )


def shared_checkpoint(
    file: str, digest: str, top1: float, recipe: str, name: str = "cifar10-jpeg"
) -> Checkpoint:
    """A checkpoint trained here for cifar10-jpeg (no public URL; lives in REFLOW_HOME/models)."""
    return Checkpoint(
        name=name,
        file=file,
        sha256=digest,
        url=None,
        dense_top1={"cifar10-jpeg": top1},
        accuracy_source="shared/README.md (eval: ToTensor + Normalize, full test split)",
        recipe=recipe,
    )


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(entry: ModelEntry) -> ModelEntry:
    """Add a model entry (its name unique across the zoo)."""
    return MODELS.add(entry.name, entry)
