"""Prune any ``nn.Module`` in one shot, repair it, save it and load it back.

    pruned, report = reflow.prune(model, 0.8, method="mp", repair="reflow", calibration=batches)
    reflow.save_pruned(pruned, "pruned.pt", card=report.card())
    model = reflow.load_pruned("pruned.pt", build=lambda: torchvision.models.resnet18())

The saved file is a plain state dict (``torch.load(path, weights_only=True)``): for unstructured
and N:M masks it loads into the original architecture; a structurally pruned model's card records
every changed layer's shape so that `load_pruned` rebuilds the smaller network first.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reflow import baselines
from reflow.atomic import atomic_write
from reflow.baselines.base import PruneContext
from reflow.data import Batch
from reflow.errors import ReflowError
from reflow.masks import Masks, Pattern, apply_masks, check_sparsity, sparsity_of
from reflow.options import non_default
from reflow.provenance import git_commit
from reflow.repairs import RepairContext, get_repair
from reflow.tensor_cache import atomic_torch_save
from reflow.timing import PhaseTimer


@dataclass
class PruneReport:
    """What `prune` did: the facts a card or a log needs (masks kept for saving)."""

    method: str
    repair: str
    sparsity: float
    sparsity_achieved: float
    prunable_params: int
    scope: str
    pattern: str
    structured: bool
    calibration_samples: int
    seconds: dict[str, float]
    method_options: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    masks: Masks = field(default_factory=dict, repr=False)

    def card(self, **extra: Any) -> dict[str, Any]:
        """A JSON-ready description of the pruned model (``extra`` adds model/data facts)."""
        facts = {k: v for k, v in asdict(self).items() if k != "masks"}
        facts["info"] = {k: v for k, v in self.info.items() if isinstance(v, int | float | str)}
        return {
            **extra,
            **facts,
            "git_commit": git_commit(),
            "torch": torch.__version__,
        }


def batch_sampler(batches: Sequence[Batch] | None) -> Callable[[int, int], list[Batch]] | None:
    """``sample(n, bs)`` drawing n batches of bs samples from the front of ``batches``."""
    if batches is None:
        return None
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])

    def sample(n: int, size: int) -> list[Batch]:
        if n * size > len(x):
            raise ReflowError(
                f"{n} batches of {size} need {n * size} samples but {len(x)} were given; pass "
                "more batches or choose smaller method options"
            )
        return [(x[i * size : (i + 1) * size], y[i * size : (i + 1) * size]) for i in range(n)]

    return sample


def prune(
    model: nn.Module,
    sparsity: float | None = None,
    method: str = "mp",
    repair: str = "reflow",
    calibration: Iterable[Batch] | None = None,
    *,
    train: Iterable[Batch] | None = None,
    scope: str = "all",
    pattern: str = "",
    options: dict[str, str] | None = None,
    repair_options: dict[str, str] | None = None,
    seed: int = 0,
    inplace: bool = False,
) -> tuple[nn.Module, PruneReport]:
    """Prune ``model`` in one shot with ``method`` and repair it with ``repair``.

    ``calibration``: image batches for the repair (REFLOW: 50 × 128 in the paper) and for
    methods that read layer inputs; ``train``: labelled batches for methods that need gradients.
    ``pattern`` ("2:4", …) constrains score-based methods and fixes the sparsity. Returns the
    pruned model (a copy unless ``inplace``) and a `PruneReport`.
    """
    calibration = list(calibration) if calibration is not None else None
    train = list(train) if train is not None else None
    chosen = baselines.get_method(method, options)
    fixer = get_repair(repair, repair_options)
    if pattern:
        parsed = Pattern.parse(pattern)
        if sparsity is not None and abs(sparsity - parsed.sparsity) > 1e-9:
            raise ReflowError(f"pattern {parsed} fixes the sparsity at {parsed.sparsity:g}")
        if not chosen.supports_pattern:
            raise ReflowError(f"method {method} does not select by scores; no N:M pattern")
        sparsity = parsed.sparsity
    if sparsity is None:
        raise ReflowError("give a sparsity (e.g. 0.8) or an N:M pattern")
    check_sparsity(sparsity)
    for reason in (chosen.applies_to(model), fixer.applies_to(model)):
        if reason:
            raise ReflowError(reason)
    if "train_data" in chosen.needs and train is None:
        raise ReflowError(f"method {method} needs labelled batches for its gradients: pass train=")
    if "activations" in chosen.needs and calibration is None and train is None:
        raise ReflowError(f"method {method} reads layer inputs: pass calibration= batches")
    if "calibration" in fixer.needs and calibration is None:
        raise ReflowError(f"repair {repair} needs calibration= batches (e.g. 50 of 128 images)")
    device = next(model.parameters()).device
    dense = model if not inplace else copy.deepcopy(model)
    work = model if inplace else copy.deepcopy(model)
    work.eval()
    timer = PhaseTimer(device)
    first = (calibration or train or [(torch.zeros(1, 3, 224, 224), None)])[0][0]
    ctx = PruneContext(
        generator=torch.Generator().manual_seed(seed),
        device=device,
        scope=scope,
        train_sample=batch_sampler(train),
        activation_sample=batch_sampler(calibration if calibration is not None else train),
        pattern=Pattern.parse(pattern) if pattern else None,
        input_shape=tuple(first.shape[1:]),
        timer=timer,
    )
    torch.manual_seed(seed)
    start = time.perf_counter()
    with timer.phase("select"):
        result = chosen.prune(work, sparsity, ctx)
    if result.model is not None:
        work = result.model.to(device).eval()
    else:
        with timer.phase("apply"):
            apply_masks(work, result.masks)
    with timer.phase("repair"):
        used = fixer.repair(
            work,
            RepairContext(
                calibration=(lambda: calibration) if calibration is not None else None,
                dense_model=dense,
            ),
        )
    report = sparsity_of(result.masks)
    timer.seconds["total"] = time.perf_counter() - start
    return work, PruneReport(
        method=method,
        repair=repair,
        sparsity=sparsity,
        sparsity_achieved=report.sparsity,
        prunable_params=report.total,
        scope=scope,
        pattern=pattern,
        structured=result.model is not None,
        calibration_samples=used,
        seconds=dict(timer.seconds),
        method_options=non_default(chosen.config),
        info=dict(result.info),
        masks=result.masks,
    )


def layer_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """The channel counts of every conv, linear and norm layer (what structured pruning moves)."""
    shapes: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            shapes[name] = {"in": m.in_features, "out": m.out_features}
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            shapes[name] = {"features": m.num_features}
        elif isinstance(m, nn.GroupNorm):
            shapes[name] = {"features": m.num_channels, "groups": m.num_groups}
    return shapes


def save_pruned(
    model: nn.Module,
    path: Path | str,
    card: dict[str, Any] | None = None,
    masks: Masks | None = None,
) -> list[Path]:
    """Write the state dict to ``path``, a JSON card beside it (``.json``) and, when given, the
    masks (``.masks.pt``). Files are written atomically."""
    path = Path(path)
    card = dict(card or {})
    card["layer_shapes"] = layer_shapes(model)
    card["files"] = {"state_dict": path.name, "card": path.with_suffix(".json").name}
    written = [path, path.with_suffix(".json")]
    atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    if masks is not None:
        target = path.with_suffix(".masks.pt")
        atomic_torch_save({k: v.cpu() for k, v in masks.items()}, target)
        card["files"]["masks"] = target.name
        written.append(target)
    text = json.dumps(card, indent=2, sort_keys=True, default=str)
    atomic_write(path.with_suffix(".json"), lambda f: f.write(text))
    return written


def reshape_like(model: nn.Module, shapes: dict[str, dict[str, int]]) -> nn.Module:
    """Replace every layer whose channel counts differ from ``shapes`` by one of those counts
    (same kernel, stride, padding): the architecture a structurally pruned model had."""
    modules = dict(model.named_modules())
    for name, shape in shapes.items():
        old = modules.get(name)
        if old is None:
            raise ReflowError(f"the saved model has a layer {name!r} this architecture lacks")
        new = _resized(old, shape)
        if new is not old:
            parent_name, _, attr = name.rpartition(".")
            setattr(modules[parent_name] if parent_name else model, attr, new)
    return model


def _resized(m: nn.Module, shape: dict[str, int]) -> nn.Module:
    if isinstance(m, nn.Conv2d) and (m.in_channels, m.out_channels, m.groups) != (
        shape["in"],
        shape["out"],
        shape["groups"],
    ):
        return nn.Conv2d(
            shape["in"],
            shape["out"],
            m.kernel_size,
            m.stride,
            m.padding,
            m.dilation,
            shape["groups"],
            m.bias is not None,
        )
    if isinstance(m, nn.Linear) and (m.in_features, m.out_features) != (shape["in"], shape["out"]):
        return nn.Linear(shape["in"], shape["out"], m.bias is not None)
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.num_features != shape["features"]:
        return type(m)(shape["features"], m.eps, m.momentum, m.affine, m.track_running_stats)
    if isinstance(m, nn.GroupNorm) and m.num_channels != shape["features"]:
        return nn.GroupNorm(shape["groups"], shape["features"], m.eps, m.affine)
    return m


def load_pruned(path: Path | str, build: Callable[[], nn.Module] | None = None) -> nn.Module:
    """A saved pruned model: ``build()`` makes the original architecture (default: the zoo model
    named in the card), reshaped to the card's layer shapes, with the saved weights loaded."""
    path = Path(path)
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        raise ReflowError(f"no card beside {path} (looked for {card_path})")
    card = json.loads(card_path.read_text())
    if build is None:
        from reflow.zoo import get_entry

        entry = get_entry(card.get("model", ""))
        model = entry.build(entry.num_classes)
    else:
        model = build()
    reshape_like(model, card["layer_shapes"])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
