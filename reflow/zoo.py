"""Model zoo: one entry point (`get_model`, `list_models`, `resolve_checkpoint`) over the models
registered where they are defined (CIFAR ResNets, MobileNetV1; torchvision's ImageNet
architectures below). Each checkpoint entry carries its file, sha256 (verified on load), public
URL, recorded dense accuracy and training recipe, as torchvision's weights entries do.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torchvision
from torch import nn

from reflow import cifar_resnet, mobilenet, paths  # noqa: F401 (they register their models)
from reflow.atomic import atomic_write
from reflow.errors import ReflowError
from reflow.model_registry import MODELS, Checkpoint, ModelEntry, register_model

__all__ = ["MODELS", "Checkpoint", "ModelEntry", "get_model", "list_models"]


def _torchvision_checkpoints(arch: str) -> tuple[Checkpoint, ...]:
    """The torchvision DEFAULT weights as a zoo checkpoint. torchvision publishes only the
    8-hex-digit sha256 prefix in the file name, and nothing here checks it for us: the prefix is
    verified after download and the full digest is pinned on first use (`pinned_digest`)."""
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


for _arch in (
    "resnet50",
    "resnet101",
    "resnet152",
    "mobilenet_v2",
    "resnext101_64x4d",
    "regnet_x_32gf",
):
    register_model(
        ModelEntry(
            _arch,
            "imagenet",
            lambda n, arch=_arch: torchvision.models.get_model(arch, weights=None, num_classes=n),
            1000,
            _torchvision_checkpoints(_arch),
            summary=f"torchvision {_arch} (ImageNet-1k, 224x224)",
        )
    )


def list_models() -> list[str]:
    return MODELS.names()


def get_entry(name: str) -> ModelEntry:
    return MODELS.get(name)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """The file's sha256 (remembered per path, size and modification time in this process)."""
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _DIGESTS[memo] = digest.hexdigest()
    return _DIGESTS[memo]


def verify_checksum(path: Path, expected: str) -> None:
    """Raise a clear error when ``path`` does not hash to ``expected`` (full digest or prefix)."""
    actual = sha256_of(path)
    if not actual.startswith(expected.lower()):
        raise ReflowError(
            f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}. The file is "
            "corrupt or not the zoo's checkpoint; delete it so it is fetched again, or pass it "
            "with --checkpoint PATH to use it deliberately (unverified)."
        )


def pinned_digest(path: Path, ckpt: Checkpoint) -> str:
    """The full sha256 a zoo file must have. Entries that know only the prefix their file name
    carries (torchvision's weights, the akamaster ResNet-44/56/110) pin the full digest of the
    first verified copy in ``FILE.sha256`` beside it (trust on first use) and check every later
    load against it, so a file replaced after its first use is noticed."""
    if len(ckpt.sha256) == 64:
        return ckpt.sha256
    verify_checksum(path, ckpt.sha256)
    pin = path.with_name(path.name + ".sha256")
    if pin.is_file():
        return pin.read_text().strip()
    digest = sha256_of(path)
    with contextlib.suppress(OSError):  # a read-only models folder: the prefix check is all
        atomic_write(pin, lambda f: f.write(digest + "\n"))
    return digest


def locate_checkpoint(ckpt: Checkpoint, download: bool = True) -> Path:
    """Find ``ckpt.file`` in REFLOW_HOME/models or the cache; download it when it has a URL.

    A download is checked against the entry's digest before it is moved into place (the full
    sha256 where the entry records it, else the prefix the file name carries)."""
    tried = [d / ckpt.file for d in paths.checkpoint_dirs()]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    target = tried[-1]
    if download and ckpt.url:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        try:
            torch.hub.download_url_to_file(ckpt.url, str(partial), progress=True)
        except Exception as exc:  # network errors come in many types
            partial.unlink(missing_ok=True)
            raise ReflowError(
                f"checkpoint {ckpt.file} not found (tried {', '.join(map(str, tried))}) and the "
                f"download from {ckpt.url} failed ({exc}). Set REFLOW_HOME to a folder with "
                "models/, or pass --checkpoint PATH."
            ) from exc
        try:
            verify_checksum(partial, ckpt.sha256)
        except ReflowError:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, target)
        return target
    raise ReflowError(
        f"checkpoint {ckpt.file} not found; tried {', '.join(map(str, tried))}. "
        + (f"Download it from {ckpt.url}, or set" if ckpt.url else "It has no public URL: set")
        + " REFLOW_HOME to the folder that holds models/ (e.g. REFLOW_HOME=../shared), or pass "
        "--checkpoint PATH."
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a plain, ``{"state_dict": ...}`` or DataParallel (``module.``) file."""
    if path.is_dir():
        raise ReflowError(f"checkpoint {path} is a directory; pass the weights file inside it")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReflowError(
            f"cannot read checkpoint {path}: not a torch file, or truncated ({reason[:200]})"
        ) from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ReflowError(f"{path} holds no state dict (found {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in state.items()}


def check_finite(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse weights with NaN or Inf: they evaluate to a constant prediction (10% top-1 on
    CIFAR-10) that would be stored as if it were a result."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ReflowError(
                f"{where}: tensor {name!r} has {bad} non-finite value(s) (NaN or Inf); "
                "the weights are broken, use another checkpoint"
            )


def check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Compare a state dict's keys and shapes with the architecture's, in one line."""
    expected = model.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself (files saved before torch 0.4.1).
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = [
        f"{len(items)} {what} (first: {items[0]})"
        for items, what in (
            (missing, "keys missing"),
            (unexpected, "unexpected keys"),
            (shapes, "shapes differ"),
        )
        if items
    ]
    if problems:
        raise ReflowError(
            f"{where} does not fit {type(model).__name__}: {'; '.join(problems)}. Is it a "
            "checkpoint of another architecture? Pick the matching --model."
        )


@dataclass(frozen=True)
class CheckpointRef:
    """What a ``--checkpoint`` string means, resolved once: the one object the plan, the row key,
    the loader and the saved card read.

    A zoo checkpoint is keyed by its zoo name (its file is verified by sha256 on load); a user's
    file is keyed by its content, ``sha256:<16 hex>``, never by its file name (two files called
    model.pt are two checkpoints), with the file name kept as the readable label. A user file
    whose content is a zoo checkpoint of the model is that zoo checkpoint.
    """

    model: str
    #: The ``checkpoint`` column: a zoo name, ``sha256:<16 hex>`` or ``none``.
    key: str
    #: Readable name: the zoo name, the file name, or ``none``.
    label: str
    #: The user's file (absolute), or None for zoo checkpoints (located on load) and random init.
    path: str | None = None
    #: Full sha256 of a user file; the zoo entry's digest (full, or the prefix it records).
    sha256: str | None = None
    zoo_name: str | None = None
    recorded_top1: float | None = None


def _looks_like_path(text: str) -> bool:
    return any(sep in text for sep in "/\\") or Path(text).suffix in {".pt", ".th", ".pth"}


def resolve_checkpoint(name: str, checkpoint: str | None, dataset: str | None) -> CheckpointRef:
    """The one reading of a checkpoint string: ``None`` (the entry recorded best on ``dataset``,
    or random init), ``"none"`` (random init, seeded by the caller), a zoo checkpoint name, or a
    file path. Raises a one-line error for a directory, a missing file or an unknown name."""
    entry = get_entry(name)
    if checkpoint is None:
        ckpt = entry.default_checkpoint(dataset) if dataset else None
        if ckpt is None:
            return CheckpointRef(name, "none", "none")
        return _zoo_ref(name, ckpt, dataset)
    if checkpoint == "none":
        return CheckpointRef(name, "none", "none")
    if any(c.name == checkpoint for c in entry.checkpoints):
        return _zoo_ref(name, entry.checkpoint(checkpoint), dataset)
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        raise ReflowError(
            f"checkpoint {path.resolve()} is a directory; pass the weights file inside it"
        )
    if path.is_file():
        path = path.resolve()
        digest = sha256_of(path)
        for ckpt in entry.checkpoints:
            if digest.startswith(ckpt.sha256.lower()):
                return replace(_zoo_ref(name, ckpt, dataset), path=str(path))
        return CheckpointRef(
            name, f"sha256:{digest[:16]}", path.name, str(path), digest, None, None
        )
    if _looks_like_path(checkpoint):
        raise ReflowError(f"checkpoint file not found: {path.resolve()}")
    entry.checkpoint(checkpoint)  # raises: unknown name, listing the valid ones
    raise AssertionError("unreachable")


def _zoo_ref(name: str, ckpt: Checkpoint, dataset: str | None) -> CheckpointRef:
    recorded = ckpt.dense_top1.get(dataset) if dataset else None
    return CheckpointRef(name, ckpt.name, ckpt.name, None, ckpt.sha256, ckpt.name, recorded)


@dataclass
class LoadedModel:
    model: nn.Module
    entry: ModelEntry
    #: Label stored in the ``checkpoint`` column: zoo name, ``sha256:…`` of a file, or "none".
    checkpoint: str
    recorded_top1: float | None
    ref: CheckpointRef | None = None


def get_model(
    name: str, checkpoint: str | CheckpointRef | None = None, dataset: str | None = None
) -> LoadedModel:
    """Build ``name`` in eval mode with weights (see `resolve_checkpoint` for ``checkpoint``).

    A resolved reference is loaded as planned: a user file whose content changed since it was
    resolved is refused, and so are weights with NaN or Inf."""
    ref = (
        checkpoint
        if isinstance(checkpoint, CheckpointRef)
        else resolve_checkpoint(name, checkpoint, dataset)
    )
    entry = get_entry(name)
    model = entry.build(entry.num_classes)
    if ref.key != "none":
        path, state = load_checkpoint(ref)
        check_fits(model, state, str(path))
        model.load_state_dict(state, strict=True)
    return LoadedModel(model.eval(), entry, ref.key, ref.recorded_top1, ref)


def load_checkpoint(ref: CheckpointRef) -> tuple[Path, dict[str, torch.Tensor]]:
    """The verified, finite state dict ``ref`` names, and the file it came from."""
    if ref.zoo_name is not None:
        ckpt = get_entry(ref.model).checkpoint(ref.zoo_name)
        path = Path(ref.path) if ref.path else locate_checkpoint(ckpt)
        pinned = pinned_digest(path, ckpt)
        if len(ckpt.sha256) < 64 and sha256_of(path) != pinned:
            raise ReflowError(
                f"checkpoint {path} changed since its first verified use (sha256 "
                f"{sha256_of(path)[:16]}, pinned {pinned[:16]} in {path.name}.sha256); delete "
                "both files so it is fetched and verified again"
            )
        verify_checksum(path, pinned)
    else:
        path = Path(ref.path or "")
        if not path.is_file():
            raise ReflowError(f"checkpoint file not found: {path}")
        if sha256_of(path) != ref.sha256:
            raise ReflowError(
                f"checkpoint {path} changed since the run was planned (sha256 "
                f"{sha256_of(path)[:16]}, planned {(ref.sha256 or '')[:16]}); run the command "
                "again"
            )
    state = read_state_dict(path)
    check_finite(state, f"checkpoint {path}")
    return path, state


def check_checkpoint(name: str, checkpoint: str | None, dataset: str) -> CheckpointRef:
    """Resolve and check now, before any row runs, the weights a row would load: the file is
    found, read, finite and of the model's architecture. A zoo checkpoint with a public URL that
    is not on disk yet passes (it is downloaded, and verified, on load)."""
    ref = resolve_checkpoint(name, checkpoint, dataset)
    if ref.key == "none":
        return ref
    if ref.zoo_name is not None and ref.path is None:
        ckpt = get_entry(name).checkpoint(ref.zoo_name)
        try:
            locate_checkpoint(ckpt, download=False)
        except ReflowError:
            if ckpt.url is None:
                raise
            return ref
    _check_loadable(ref)
    return ref


@functools.cache
def _check_loadable(ref: CheckpointRef) -> None:
    """Read, verify and shape-check ``ref`` once per process (a user file's key is its digest,
    so a changed file is a new reference and is checked again)."""
    path, state = load_checkpoint(ref)
    entry = get_entry(ref.model)
    check_fits(entry.build(entry.num_classes), state, str(path))
