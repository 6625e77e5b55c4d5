"""Prune any ``nn.Module`` in one shot, repair it, save it and load it back.

    pruned, report = reflow.prune(model, 0.8, method="mp", repair="reflow", calibration=batches)
    reflow.save_pruned(pruned, "pruned.pt", card=report.card())
    model = reflow.load_pruned("pruned.pt", build=lambda: torchvision.models.resnet18())

The saved file is a plain state dict (``torch.load(path, weights_only=True)``): for unstructured
and N:M masks it loads into the original architecture; a structurally pruned model's card records
every changed layer's shape so that `load_pruned` rebuilds the smaller network first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reflow import baselines
from reflow.atomic import write_temporary
from reflow.data import Batch
from reflow.errors import ReflowError
from reflow.grid import check_seed
from reflow.harness import Setup, outcome_columns, repair_phase, select_phase
from reflow.identity import full_config
from reflow.masks import Masks, Pattern, check_sparsity
from reflow.options import non_default
from reflow.paths import check_output
from reflow.provenance import device_name, git_commit
from reflow.repairs import get_repair
from reflow.settings import Settings
from reflow.timing import PhaseTimer
from reflow.zoo import LoadedModel, check_finite, sha256_of


@dataclass
class PruneReport:
    """What `prune` did: its result row (the one format of every stored row and `reflow prune`'s
    card), the method's raw facts and the masks kept for saving; the fields read the row."""

    #: The result row's columns (the format every stored row and `reflow prune`'s card use).
    row: dict[str, Any] = field(repr=False)
    masks: Masks = field(default_factory=dict, repr=False)
    #: Options the caller chose that differ from the method's defaults.
    method_options: dict[str, Any] = field(default_factory=dict)
    #: What the method measured, as it gave it (the row has these as ``info_*`` columns).
    info: dict[str, Any] = field(default_factory=dict)

    method = property(lambda self: self.row["method"])
    repair = property(lambda self: self.row["repair"])
    sparsity = property(lambda self: self.row["sparsity"])
    sparsity_achieved = property(lambda self: self.row["sparsity_achieved"])
    prunable_params = property(lambda self: self.row["prunable_params"])
    scope = property(lambda self: self.row["scope"])
    pattern = property(lambda self: self.row["pattern"] or "")
    structured = property(lambda self: self.row["structured"])
    calibration_samples = property(lambda self: self.row["calib_samples"])

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds per phase that ran (the row's ``t_*`` columns)."""
        return {k[2:]: v for k, v in self.row.items() if k.startswith("t_") and v is not None}

    def card(self, **extra: Any) -> dict[str, Any]:
        """A JSON-ready description of the pruned model: the result row's columns, one format
        with `reflow prune`'s card and the store (``extra`` adds model/data facts)."""
        return {**self.row, **extra}


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


def _batches(batches: Iterable[Batch] | None, name: str, labelled: bool) -> list[Batch] | None:
    """``batches`` as a list of (images, labels): a batch may be a tensor of images or a pair
    whose labels are None where no labels are needed (repairs and layer inputs read images
    only; their labels are filled with -1, which any loss refuses)."""
    if batches is None:
        return None
    out = []
    for i, batch in enumerate(batches):
        x, y = (batch, None) if isinstance(batch, torch.Tensor) else tuple(batch)
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or len(x) == 0:
            raise ReflowError(f"{name}= batch {i} holds no images (expected a tensor N×C×H×W)")
        if y is None:
            if labelled:
                raise ReflowError(f"{name}= batch {i} has no labels; gradients need (x, y)")
            y = torch.full((len(x),), -1, dtype=torch.long)
        out.append((x, y))
    if not out:
        raise ReflowError(f"{name}= is empty; pass at least one batch of images")
    return out


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
    if sparsity is not None:
        check_sparsity(sparsity)
    check_seed(seed)
    calibration = _batches(calibration, "calibration", labelled=False)
    train = _batches(train, "train", labelled=True)
    check_finite(model.state_dict(), "the model")
    chosen = baselines.get_method(method, options)  # the options checked here, once
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
    settings = Settings(
        scope=scope,
        pattern=pattern,
        options={method: dict(options or {}), repair: dict(repair_options or {})},
    )
    device = next(model.parameters()).device
    first = (calibration or train or [(torch.zeros(1, 3, 224, 224), None)])[0][0]
    setup = Setup(
        LoadedModel(model.eval(), None, "module", None),  # type: ignore[arg-type]
        GivenBatches(calibration, train),  # type: ignore[arg-type]
        device,
        shape=tuple(first.shape[1:]),
    )
    timer = PhaseTimer(device)
    pruned, result = select_phase(setup, chosen, sparsity, seed, settings, timer)
    with timer.phase("repair"):
        used = repair_phase(setup, pruned, fixer, seed, settings)
    if inplace and result.model is None:  # the caller's module takes the pruned state
        model.load_state_dict(pruned.state_dict())
        pruned = model
    row = {
        "model": type(model).__name__,
        "method": method,
        "repair": repair,
        "sparsity": sparsity,
        "seed": seed,
        "scope": scope,
        "pattern": pattern or None,
        "device": device_name(device),
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "dataset": "given",
        "config": json.dumps(full_config(chosen.config, fixer.config, settings), sort_keys=True),
    } | outcome_columns(setup, result, None, None, used, timer.seconds)
    del row["predictions"], row["dense_predictions"]
    return pruned, PruneReport(row, result.masks, non_default(chosen.config), dict(result.info))


@dataclass
class GivenBatches:
    """The caller's batches as the harness's data streams, so `prune` runs the same phases as
    every sweep row: ``calibration`` is what repairs get (all of it, as given); gradients come
    from the first n × bs samples of ``train``, layer inputs from those of ``calibration`` (or
    ``train``)."""

    calibration: list[Batch] | None
    train: list[Batch] | None

    def train_sample(self, n_batches: int, batch_size: int, seed: int, stream: str) -> list[Batch]:
        if stream == "calibration":
            return list(self.calibration or [])
        source = self.train if stream == "gradients" or self.calibration is None else None
        sample = batch_sampler(source if source is not None else self.calibration)
        if sample is None:
            raise ReflowError(f"no batches were given for the {stream} stream")
        return sample(n_batches, batch_size)


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


def pruned_files(path: Path | str, masks: bool = False) -> dict[str, Path]:
    """The files `save_pruned` writes for ``path``: the state dict, its card (``.json``) and,
    with ``masks``, the masks (``.masks.pt``)."""
    path = Path(path)
    files = {"state_dict": path, "card": path.with_suffix(".json")}
    if masks:
        files["masks"] = path.with_suffix(".masks.pt")
    return files


def check_save_target(
    path: Path | str, masks: bool = False, overwrite: bool = False, keep: Iterable[Path] = ()
) -> dict[str, Path]:
    """Refuse, before any work, a save target that cannot be written or would destroy a file:
    a directory, an unwritable folder, a path whose card would be itself (``x.json``), a file in
    ``keep`` (the input checkpoint), or an existing file unless ``overwrite``."""
    files = pruned_files(path, masks)
    if Path(path).suffix == ".json":
        raise ReflowError(
            f"--save {path}: the card is written beside the weights as .json, so it would "
            "overwrite them; save the weights as .pt"
        )
    protected = {Path(k).resolve() for k in keep}
    for what, target in files.items():
        check_output(target, "--save")
        if target.resolve() in protected:
            raise ReflowError(
                f"--save {path}: the {what.replace('_', ' ')} would overwrite the input "
                f"checkpoint {target}; save elsewhere"
            )
    existing = [str(t) for t in files.values() if t.exists()]
    if existing and not overwrite:
        raise ReflowError(
            f"--save {path}: {', '.join(existing)} exist(s); pass --force to replace, or save "
            "elsewhere"
        )
    return files


def save_pruned(
    model: nn.Module,
    path: Path | str,
    card: dict[str, Any] | None = None,
    masks: Masks | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write the state dict to ``path``, a JSON card beside it (``.json``) and, when given, the
    masks (``.masks.pt``). An existing file is replaced only with ``overwrite``.

    Every file is written under a temporary name first; then an old card is removed, the weights
    and masks are moved into place and the card comes last, carrying the weights' sha256. A
    reader (`load_pruned`) therefore never takes the weights of one run with the card of
    another: it finds no card, or a card whose digest it checks."""
    files = check_save_target(path, masks is not None, overwrite)
    card = dict(card or {})
    card["layer_shapes"] = layer_shapes(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    temporary: dict[str, Path] = {}
    try:
        temporary["state_dict"] = write_temporary(
            files["state_dict"], lambda f: torch.save(state, f), binary=True
        )
        if masks is not None:
            saved = {k: v.cpu() for k, v in masks.items()}
            temporary["masks"] = write_temporary(
                files["masks"], lambda f: torch.save(saved, f), binary=True
            )
        card["files"] = {k: files[k].name for k in ("state_dict", "card", *temporary)}
        card["state_dict_sha256"] = sha256_of(temporary["state_dict"])
        text = json.dumps(card, indent=2, sort_keys=True, default=str)
        temporary["card"] = write_temporary(files["card"], lambda f: f.write(text))
        files["card"].unlink(missing_ok=True)
        for what in ("state_dict", "masks", "card"):
            if what in temporary:
                os.replace(temporary.pop(what), files[what])
    finally:
        for leftover in temporary.values():
            leftover.unlink(missing_ok=True)
    return list(files.values())


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
    expected = card.get("state_dict_sha256")
    if expected and sha256_of(path) != expected:
        raise ReflowError(
            f"{path} is not the state dict its card {card_path} describes (sha256 differs): the "
            "files come from two different saves; save the model again"
        )
    if build is None:
        from reflow.zoo import get_entry

        entry = get_entry(card.get("model", ""))
        model = entry.build(entry.num_classes)
    else:
        model = build()
    reshape_like(model, card["layer_shapes"])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
