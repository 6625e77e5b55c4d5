"""The practitioner's path: reflow.prune on any module, save and load, the `reflow prune`
command, structured channel pruning and N:M patterns."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torchvision
from helpers import run_grid, trained_like
from torch import nn

import reflow
from reflow import baselines
from reflow.cifar_resnet import cifar_resnet
from reflow.cli import main
from reflow.errors import ReflowError
from reflow.grid import Grid
from reflow.masks import Pattern, follows_pattern, pattern_masks, prunable_parameters
from reflow.mobilenet import MobileNetV1Cifar
from reflow.norms import batchnorm_layers
from reflow.results import ResultStore
from reflow.settings import Settings


def _images(n: int = 4, size: int = 32, bs: int = 16, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(bs, 3, size, size, generator=g), torch.randint(10, (bs,), generator=g))
        for _ in range(n)
    ]


def test_prune_any_torchvision_module_and_repair_it() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    before = copy.deepcopy(model.state_dict())
    pruned, report = reflow.prune(
        model, 0.8, method="mp", repair="reflow", calibration=_images(size=64)
    )
    assert report.sparsity_achieved == pytest.approx(0.8, abs=1e-6)
    assert report.calibration_samples == 64 and not report.structured
    for k, v in model.state_dict().items():  # the input model is untouched
        assert torch.equal(v, before[k])
    bn = pruned.layer4[1].bn2
    assert int(bn.num_batches_tracked) == 4  # REFLOW: reset, then four calibration batches
    assert pruned(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_prune_says_what_is_missing() -> None:
    model = trained_like(cifar_resnet(20, width=4))
    with pytest.raises(ReflowError, match="needs labelled batches"):
        reflow.prune(model, 0.5, method="wf_u", repair="none")
    with pytest.raises(ReflowError, match="needs calibration= batches"):
        reflow.prune(model, 0.5, method="mp", repair="reflow")
    with pytest.raises(ReflowError, match=r"fixes the sparsity at 0\.5"):
        reflow.prune(model, 0.7, pattern="2:4", repair="none")
    with pytest.raises(ReflowError, match="BatchNorm"):
        reflow.prune(cifar_resnet(20, norm="layer", width=4), 0.5, calibration=_images())


def test_gradient_and_activation_methods_through_the_api() -> None:
    model = trained_like(cifar_resnet(20, width=4))
    _, report = reflow.prune(
        model,
        0.6,
        method="wf_u",
        repair="none",
        train=_images(n=2),
        options={"num_grads": "16", "block_size": "32"},
    )
    assert report.info["grad_samples"] == 16
    _, report = reflow.prune(
        model,
        0.6,
        method="sparsegpt",
        repair="statcorr",
        calibration=_images(n=2),
        options={"samples": "32", "batch_size": "16"},
    )
    assert report.sparsity_achieved == pytest.approx(0.6, abs=2e-3)


@pytest.mark.parametrize("method", ["mp", "l1_channel"])
def test_save_and_load_round_trip(tmp_path, method: str) -> None:
    model = trained_like(cifar_resnet(20, width=4))
    pruned, report = reflow.prune(model, 0.5, method=method, repair="reflow", calibration=_images())
    files = reflow.save_pruned(
        pruned, tmp_path / "p.pt", report.card(model="resnet20"), report.masks
    )
    assert [f.name for f in files] == ["p.pt", "p.json", "p.masks.pt"]
    state = torch.load(tmp_path / "p.pt", weights_only=True)
    loaded = reflow.load_pruned(tmp_path / "p.pt", build=lambda: cifar_resnet(20, width=4))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned.eval()(x))
    card = json.loads((tmp_path / "p.json").read_text())
    assert card["structured"] == (method == "l1_channel") and card["method"] == method
    if method == "mp":  # an unstructured result loads into the very same architecture
        plain = cifar_resnet(20, width=4)
        plain.load_state_dict(state)


def test_prune_command_writes_weights_and_card(tmp_path, capsys) -> None:
    argv = [
        "prune",
        "--model",
        "resnet20",
        "--dataset",
        "synthetic",
        "--method",
        "mp",
        "--sparsity",
        "0.7",
        "--repair",
        "reflow",
        "--calib-batches",
        "2",
        "--calib-batch-size",
        "16",
        "--save",
        str(tmp_path / "m.pt"),
        "--save-masks",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "mp+reflow at sparsity 0.7000" in out and "m.masks.pt" in out
    card = json.loads((tmp_path / "m.json").read_text())
    for key in (
        "model",
        "checkpoint",
        "checkpoint_sha256",
        "config",
        "sparsity_achieved",
        "calib_samples",
        "dense_top1",
        "top1",
        "git_commit",
        "torch",
        "state_dict_sha256",
        "layer_shapes",
    ):
        assert key in card
    model = cifar_resnet(20)
    model.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    masks = torch.load(tmp_path / "m.masks.pt", weights_only=True)
    assert all(bool((model.state_dict()[n][~m] == 0).all()) for n, m in masks.items())
    assert (
        main([*argv[:7], "--sparsity", "0.7", "--pattern", "2:4", "--save", str(tmp_path / "x.pt")])
        == 2
    )
    assert "fixes the sparsity at 0.5" in capsys.readouterr().err


# -- structured pruning ------------------------------------------------------------------------


def _ctx(shape=(3, 32, 32)) -> baselines.PruneContext:
    return baselines.PruneContext(torch.Generator(), torch.device("cpu"), input_shape=shape)


@pytest.mark.parametrize("name", ["l1_channel", "bn_scale"])
@pytest.mark.parametrize(
    "make", [lambda: cifar_resnet(20, width=4), MobileNetV1Cifar], ids=["resnet20", "mobilenet_v1"]
)
def test_structured_methods_shrink_the_network(name: str, make) -> None:
    model = trained_like(make())
    result = baselines.get_method(name).prune(copy.deepcopy(model), 0.5, _ctx())
    small = result.model
    kept = sum(int(m.sum()) for m in result.masks.values())
    remaining = sum(p.numel() for p in prunable_parameters(small).values())
    assert kept == remaining  # masks in original coordinates match what was removed
    achieved = 1 - kept / sum(m.numel() for m in result.masks.values())
    assert abs(achieved - 0.5) < 0.05  # channel granularity
    x = torch.randn(2, 3, 32, 32)
    assert small(x).shape == (2, 10)
    reflow.recalibrate.reflow(small, _images(n=2))  # repairs run on the smaller network
    assert all(not bn.training for bn in batchnorm_layers(small).values())
    if isinstance(model, nn.Module) and hasattr(model, "layer1"):  # option A: stream kept
        assert small.layer1[0].conv2.out_channels == model.layer1[0].conv2.out_channels


@pytest.mark.parametrize("name", ["l1_channel", "bn_scale"])
def test_statcorr_on_a_structured_network_matches_the_kept_dense_channels(name: str) -> None:
    """Channel pruning removes BN channels: statcorr must compare each kept channel with the
    same channel of the dense model, not position by position."""
    from reflow.norms import norm_layers
    from reflow.repairs import RepairContext, get_repair
    from reflow.statcorr import output_moments

    dense = trained_like(cifar_resnet(20, width=4))
    small = baselines.get_method(name).prune(copy.deepcopy(dense), 0.5, _ctx()).model
    batches = _images(n=1, bs=64)
    shrunk = [n for n, m in norm_layers(small).items() if hasattr(m, "kept_channels")]
    assert shrunk  # some BN layers lost channels
    ctx = RepairContext(calibration=lambda: batches, dense_model=dense)
    get_repair("statcorr").repair(small, ctx)
    cpu = torch.device("cpu")
    after = output_moments(small, batches, list(norm_layers(small)), cpu)
    target = output_moments(dense, batches, list(norm_layers(dense)), cpu)
    for n, layer in norm_layers(small).items():
        kept = getattr(layer, "kept_channels", torch.arange(after[n].mean.numel()))
        torch.testing.assert_close(after[n].mean, target[n].mean[kept], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(after[n].std, target[n].std[kept], atol=1e-4, rtol=1e-4)


def test_l1_channel_removes_the_smallest_filters_and_bn_scale_the_smallest_gamma() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 10),
    ).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.arange(1, 9).float().view(8, 1, 1, 1).expand(8, 3, 3, 3))
        net[1].weight.copy_(torch.tensor([8.0, 7, 6, 5, 4, 3, 2, 1]))
    l1 = baselines.get_method("l1_channel").prune(copy.deepcopy(net), 0.3, _ctx((3, 8, 8)))
    kept_l1 = l1.masks["0.weight"].flatten(1).any(1)
    gamma = baselines.get_method("bn_scale").prune(copy.deepcopy(net), 0.3, _ctx((3, 8, 8)))
    kept_gamma = gamma.masks["0.weight"].flatten(1).any(1)
    removed = int((~kept_l1).sum())
    assert removed >= 1 and not kept_l1[:removed].any() and kept_l1[removed:].all()
    removed = int((~kept_gamma).sum())  # |γ| falls along the channels: the last ones go
    assert removed >= 1 and not kept_gamma[-removed:].any() and kept_gamma[: 8 - removed].all()


def test_structured_rows_report_size_and_latency(tmp_path) -> None:
    grid = Grid(("resnet20",), ("synthetic",), ("l1_channel",), ("none", "reflow"), (0.5,))
    fast = Settings(calib_batches=1, calib_batch_size=8, probe_samples=100)
    assert run_grid(grid, ResultStore(tmp_path), fast, progress=False)["errors"] == 0
    row = ResultStore(tmp_path).read().iloc[0]
    assert row.params < row.params_dense and row.macs < row.macs_dense
    assert row.latency_b1_ms > 0 and row.latency_b128_dense_ms > 0 and row.speedup_b128 > 0


# -- N:M patterns ------------------------------------------------------------------------------


def test_pattern_masks_keep_n_of_every_m_along_inputs() -> None:
    torch.manual_seed(0)
    scores = {
        "conv": torch.rand(6, 8, 3, 3),
        "stem": torch.rand(6, 3, 3, 3),
        "fc": torch.rand(10, 16),
    }
    pattern = Pattern.parse("2:4")
    masks = pattern_masks(scores, pattern)
    assert follows_pattern(masks, pattern)
    assert bool(masks["stem"].all())  # 3 input channels: no groups of 4, stays dense
    assert float(masks["conv"].float().mean()) == 0.5 and float(masks["fc"].float().mean()) == 0.5
    group = scores["conv"][0, 0:4, 1, 2]  # one group: the two largest kept
    assert torch.equal(masks["conv"][0, 0:4, 1, 2], group >= group.sort().values[2])
    with pytest.raises(ReflowError, match="pattern must be N:M"):
        Pattern.parse("4:2")


@pytest.mark.parametrize("text", ["2:4", "1:4", "2:8"])
def test_patterns_through_the_harness(tmp_path, text: str) -> None:
    pattern = Pattern.parse(text)
    grid = Grid(("resnet20",), ("synthetic",), ("mp", "wf_u"), ("none",), (pattern.sparsity,))
    settings = Settings(
        probe_samples=0, pattern=text, options={"wf_u": {"num_grads": "16", "block_size": "64"}}
    )
    assert run_grid(grid, ResultStore(tmp_path), settings, progress=False)["errors"] == 0
    frame = ResultStore(tmp_path).read()
    stem = 432  # the 3-channel stem of resnet20 stays dense
    expected = pattern.sparsity * (frame.prunable_params.iloc[0] - stem) / frame.prunable_params
    assert frame.sparsity_achieved.tolist() == pytest.approx(expected.tolist())
    assert (frame.pattern == text).all()


def test_prune_saves_the_row_reflow_run_stores(tmp_path, capsys) -> None:
    """One pipeline: `reflow prune` and `reflow run` on the same grid make the same row (same
    key and run id, same accuracy, same masks), and prune's card is that row plus file facts."""
    common = ["--model", "resnet20", "--dataset", "synthetic", "--method", "mp"]
    common += ["--sparsity", "0.7", "--repair", "reflow", "--calib-batches", "2"]
    common += ["--calib-batch-size", "16", "--eval-samples", "100", "--device", "cpu"]
    assert main(["prune", *common, "--save", str(tmp_path / "m.pt")]) == 0
    assert main(["run", *common, "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    capsys.readouterr()
    card = json.loads((tmp_path / "m.json").read_text())
    (row,) = ResultStore(tmp_path / "runs", readonly=True).read().to_dict("records")
    for key in ("run_id", "config_hash", "checkpoint", "top1", "top5", "loss", "dense_top1"):
        assert card[key] == row[key], key
    assert card["sparsity_achieved"] == row["sparsity_achieved"]
    assert card["calib_samples"] == row["calib_samples"] == 32
    # reflow.prune on any module reports the same columns; no row key: its data are the caller's
    _, report = reflow.prune(cifar_resnet(20).eval(), 0.7, calibration=_images(n=2))
    api_card = report.card()
    assert set(api_card) <= set(row) | {"layer_shapes"}, set(api_card) - set(row)
    assert api_card["calib_samples"] == 32 and api_card["top1"] is None
    assert report.seconds["select"] > 0 and report.calibration_samples == 32
