"""Model zoo: one entry point (`get_model`, `list_models`) over CIFAR ResNets and torchvision
ImageNet architectures. Each checkpoint entry carries its file, sha256 (verified on load), public
URL, recorded dense accuracy and training recipe, as torchvision's weights entries do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torchvision
from torch import nn

from reflow import paths
from reflow.cifar_resnet import cifar_resnet
from reflow.errors import ReflowError, unknown_name
from reflow.mobilenet import MobileNetV1Cifar
from reflow.registry import Registry

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
    name: str
    family: str  # "cifar" or "imagenet"
    build: Callable[[int], nn.Module]
    num_classes: int
    checkpoints: tuple[Checkpoint, ...] = field(default_factory=tuple)

    @property
    def input_size(self) -> int:
        """Side of the square input images the architecture expects."""
        return 32 if self.family == "cifar" else 224

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


def _cifar_checkpoints(depth: int, digest: str, published: float) -> tuple[Checkpoint, ...]:
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


def _resnet20_checkpoints() -> tuple[Checkpoint, ...]:
    (original,) = _cifar_checkpoints(
        20, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", 91.78
    )
    original = replace(original, dense_top1={"cifar10": 91.78, "cifar10-jpeg": 81.03})
    finetuned = Checkpoint(
        name="cifar10-jpeg",
        file="resnet20_cifar10jpeg.pt",
        sha256="9b4e9a0202765d26c64c775417879c5fad45fdfe343a52d3bd9e4f9e942121ef",
        url=None,
        dense_top1={"cifar10-jpeg": 88.44},
        accuracy_source="shared/README.md (eval: ToTensor + Normalize, full test split)",
        recipe=(
            "fine-tuned from resnet20-12fca82f.th on cifar10-jpeg train: 12 epochs, one-cycle "
            "SGD, lr 0.02, batch 128, random crop + flip"
        ),
    )
    return (finetuned, original)


def _resnet32_checkpoints() -> tuple[Checkpoint, ...]:
    (original,) = _cifar_checkpoints(
        32, "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850", 92.78
    )
    return (replace(original, dense_top1={"cifar10": 92.78, "cifar10-jpeg": 82.56}),)


def _torchvision_checkpoints(arch: str) -> tuple[Checkpoint, ...]:
    """The torchvision DEFAULT weights as a zoo checkpoint (torchvision verifies its own hash)."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    file = weights.url.rsplit("/", 1)[-1]
    return (
        Checkpoint(
            name="imagenet",
            file=file,
            sha256=file.rsplit("-", 1)[-1].split(".")[0],
            url=weights.url,
            dense_top1={"imagenet": weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]},
            accuracy_source=f"torchvision {weights}",
            recipe=weights.meta.get("recipe", ""),
        ),
    )


def _shared_checkpoint(
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


def _registry() -> Registry[ModelEntry]:
    entries = [
        ModelEntry("resnet20", "cifar", lambda n: cifar_resnet(20, n), 10, _resnet20_checkpoints()),
        ModelEntry("resnet32", "cifar", lambda n: cifar_resnet(32, n), 10, _resnet32_checkpoints()),
        ModelEntry(
            "resnet44",
            "cifar",
            lambda n: cifar_resnet(44, n),
            10,
            _cifar_checkpoints(44, "014dd654", 93.10),
        ),
        ModelEntry(
            "resnet56",
            "cifar",
            lambda n: cifar_resnet(56, n),
            10,
            _cifar_checkpoints(56, "4bfd9763", 93.39),
        ),
        ModelEntry(
            "resnet110",
            "cifar",
            lambda n: cifar_resnet(110, n),
            10,
            _cifar_checkpoints(110, "1d1ed7c2", 93.68),
        ),
        ModelEntry(
            "resnet20_ln",
            "cifar",
            lambda n: cifar_resnet(20, n, norm="layer"),
            10,
            (
                _shared_checkpoint(
                    "resnet20_ln_cifar10jpeg.pt",
                    "c27e5571a50cead146cc118493c1cbcbf93ddde2cfb337fc962f7c970e92c3c2",
                    83.99,
                    "every BatchNorm2d of resnet20_cifar10jpeg.pt replaced by GroupNorm(1, C) (BN "
                    "affine copied in), fine-tuned 32 epochs on cifar10-jpeg train: one-cycle SGD "
                    "nesterov, max lr 0.1, wd 5e-4, batch 128, random crop + flip",
                ),
            ),
        ),
        ModelEntry(
            "mobilenet_v1",
            "cifar",
            MobileNetV1Cifar,
            10,
            (
                _shared_checkpoint(
                    "mobilenetv1_cifar10jpeg.pt",
                    "0b258aaa2fecbee8e7810ad0f7058ea73621dd6362b12290b6e6b7621a6e06bb",
                    86.45,
                    "trained from scratch on cifar10-jpeg train: 20 epochs, one-cycle SGD "
                    "nesterov, max lr 0.1, wd 5e-4, batch 128, random crop + flip",
                ),
            ),
        ),
    ]
    for arch in (
        "resnet50",
        "resnet101",
        "resnet152",
        "mobilenet_v2",
        "resnext101_64x4d",
        "regnet_x_32gf",
    ):
        build = (lambda a: lambda n: torchvision.models.get_model(a, weights=None, num_classes=n))(
            arch
        )
        entries.append(ModelEntry(arch, "imagenet", build, 1000, _torchvision_checkpoints(arch)))
    registry: Registry[ModelEntry] = Registry("model")
    for entry in entries:
        registry.add(entry.name, entry)
    return registry


MODELS: Registry[ModelEntry] = _registry()


def list_models() -> list[str]:
    return MODELS.names()


def get_entry(name: str) -> ModelEntry:
    return MODELS.get(name)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: Path, expected: str) -> None:
    """Raise a clear error when ``path`` does not hash to ``expected`` (full digest or prefix)."""
    actual = sha256_of(path)
    if not actual.startswith(expected.lower()):
        raise ReflowError(
            f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}. The file is "
            "corrupt or not the zoo's checkpoint; delete it so it is fetched again, or pass it "
            "with --checkpoint PATH to use it deliberately (unverified)."
        )


def locate_checkpoint(ckpt: Checkpoint, download: bool = True) -> Path:
    """Find ``ckpt.file`` in REFLOW_HOME/models or the cache; download it when it has a URL."""
    tried = [d / ckpt.file for d in paths.checkpoint_dirs()]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    target = tried[-1]
    if download and ckpt.url:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(ckpt.url, str(target), progress=True)
        except Exception as exc:  # network errors come in many types
            raise ReflowError(
                f"checkpoint {ckpt.file} not found (tried {', '.join(map(str, tried))}) and the "
                f"download from {ckpt.url} failed ({exc}). Set REFLOW_HOME to a folder with "
                "models/, or pass --checkpoint PATH."
            ) from exc
        return target
    raise ReflowError(
        f"checkpoint {ckpt.file} not found; tried {', '.join(map(str, tried))}. "
        + (f"Download it from {ckpt.url}, or set" if ckpt.url else "It has no public URL: set")
        + " REFLOW_HOME to the folder that holds models/ (e.g. REFLOW_HOME=../shared), or pass "
        "--checkpoint PATH."
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a plain, ``{"state_dict": ...}`` or DataParallel (``module.``) file."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ReflowError(f"cannot read checkpoint {path}: {exc}") from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ReflowError(f"{path} holds no state dict (found {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


@dataclass
class LoadedModel:
    model: nn.Module
    entry: ModelEntry
    #: Label stored in the ``checkpoint`` column: zoo name, file name, or "none".
    checkpoint: str
    recorded_top1: float | None


def get_model(name: str, checkpoint: str | None = None, dataset: str | None = None) -> LoadedModel:
    """Build ``name`` in eval mode with weights.

    ``checkpoint`` is a zoo checkpoint name, a file path, ``"none"`` (random init, seeded by the
    caller), or None for the entry recorded best on ``dataset``.
    """
    entry = get_entry(name)
    model = entry.build(entry.num_classes)
    if checkpoint is None:
        ckpt = entry.default_checkpoint(dataset) if dataset else None
        if ckpt is None:
            return LoadedModel(model.eval(), entry, "none", None)
    elif checkpoint == "none":
        return LoadedModel(model.eval(), entry, "none", None)
    elif Path(checkpoint).suffix and Path(checkpoint).exists():
        path = Path(checkpoint)
        _load_into(model, read_state_dict(path), path)
        return LoadedModel(model.eval(), entry, path.name, None)
    elif any(sep in checkpoint for sep in "/\\") or Path(checkpoint).suffix in {
        ".pt",
        ".th",
        ".pth",
    }:
        raise ReflowError(f"checkpoint file not found: {Path(checkpoint).resolve()}")
    else:
        ckpt = entry.checkpoint(checkpoint)
    path = locate_checkpoint(ckpt)
    verify_checksum(path, ckpt.sha256)
    _load_into(model, read_state_dict(path), path)
    recorded = ckpt.dense_top1.get(dataset) if dataset else None
    return LoadedModel(model.eval(), entry, ckpt.name, recorded)


def check_checkpoint(name: str, checkpoint: str | None, dataset: str) -> None:
    """Raise now, before any row runs, if the weights a row would load cannot be found.

    A zoo checkpoint with a public URL that is not on disk yet passes: it is downloaded on load.
    """
    entry = get_entry(name)
    if checkpoint is None:
        ckpt = entry.default_checkpoint(dataset)
    elif checkpoint == "none":
        return
    elif Path(checkpoint).suffix or any(sep in checkpoint for sep in "/\\"):
        if not Path(checkpoint).is_file():
            raise ReflowError(f"checkpoint file not found: {Path(checkpoint).resolve()}")
        return
    else:
        ckpt = entry.checkpoint(checkpoint)
    if ckpt is not None and ckpt.url is None:
        locate_checkpoint(ckpt, download=False)


def checkpoint_digest(name: str, checkpoint: str | None, dataset: str) -> str | None:
    """The sha256 of the weights a model is loaded with (None for random init)."""
    entry = get_entry(name)
    if checkpoint is None:
        ckpt = entry.default_checkpoint(dataset)
    elif checkpoint == "none":
        return None
    elif Path(checkpoint).is_file():
        return sha256_of(Path(checkpoint))
    else:
        ckpt = entry.checkpoint(checkpoint)
    return ckpt.sha256 if ckpt else None


def checkpoint_label(name: str, checkpoint: str | None, dataset: str) -> str:
    """The ``checkpoint`` column value `get_model` will report, without loading anything."""
    if checkpoint is None:
        ckpt = get_entry(name).default_checkpoint(dataset)
        return ckpt.name if ckpt else "none"
    if checkpoint == "none" or not Path(checkpoint).suffix:
        return checkpoint
    return Path(checkpoint).name


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ReflowError(f"{path} does not fit {type(model).__name__}: {exc}") from exc
