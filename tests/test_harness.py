"""End-to-end harness on synthetic data: determinism, resume after a kill, error rows."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import run_grid

from reflow import execute
from reflow.errors import ReflowError
from reflow.grid import Grid
from reflow.results import ResultStore
from reflow.settings import Settings

FAST = Settings(calib_batches=2, calib_batch_size=16, eval_batch_size=500, probe_samples=200)
GRID = Grid(("resnet20",), ("synthetic",), ("mp", "random"), ("none", "reflow"), (0.5, 0.9), (0,))


def test_grid_rows_and_columns(tmp_path) -> None:
    counts = run_grid(GRID, ResultStore(tmp_path), FAST, progress=False)
    assert counts == {"done_before": 0, "duplicates": 0, "ran": 8, "errors": 0}
    store = ResultStore(tmp_path, create=False)
    frame = store.read()
    required = {
        "model",
        "dataset",
        "method",
        "repair",
        "sparsity",
        "sparsity_achieved",
        "seed",
        "top1",
        "dense_top1",
        "t_select",
        "t_apply",
        "t_repair",
        "t_evaluate",
        "calib_samples",
        "git_commit",
        "torch",
        "device",
        "config",
        "config_hash",
        "error",
    }
    assert required <= set(frame.columns)
    assert len(frame) == 8 and frame["error"].isna().all()
    assert (frame["sparsity_achieved"] - frame["sparsity"]).abs().max() < 1e-4
    assert set(frame.loc[frame.repair == "reflow", "calib_samples"]) == {32}
    assert set(frame.loc[frame.repair == "none", "calib_samples"]) == {0}
    probes = store.read("probes")
    assert len(probes) == 8 * 19  # every BN layer of every row
    assert len(store.read("layers")) == 8 * 20


def test_commit_is_read_when_the_code_is_imported() -> None:
    """A row names the commit of the code its process loaded: a commit made during a long sweep,
    before its first row finished, was once recorded for rows the older code computed."""
    probe = "import reflow.provenance as p; print(p.git_commit.cache_info().currsize)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.strip() == "1", done.stderr[-1000:]


def test_same_seed_same_results(tmp_path) -> None:
    grid = Grid(("resnet20",), ("synthetic",), ("random",), ("reflow",), (0.5,), (1,))
    run_grid(grid, ResultStore(tmp_path / "a"), FAST, progress=False)
    run_grid(grid, ResultStore(tmp_path / "b"), FAST, progress=False)
    a, b = (ResultStore(tmp_path / x).read() for x in "ab")
    assert a["top1"].tolist() == b["top1"].tolist()
    assert a["loss"].tolist() == b["loss"].tolist()
    pa, pb = (ResultStore(tmp_path / x).read("probes") for x in "ab")
    assert pa["ratio"].tolist() == pb["ratio"].tolist()


def test_interrupted_run_resumes_without_duplicates_or_losses(tmp_path, monkeypatch) -> None:
    store = ResultStore(tmp_path)
    original_add = ResultStore.add
    calls = {"n": 0}

    def add_then_die(self, row, probes=(), layers=(), outcomes=None):
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed while the fourth row is being written
        calls["n"] += 1
        original_add(self, row, probes, layers, outcomes)

    monkeypatch.setattr(ResultStore, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_grid(GRID, store, FAST, progress=False)
    monkeypatch.setattr(ResultStore, "add", original_add)
    assert len(store.read()) == 3
    counts = run_grid(GRID, store, FAST, progress=False)
    assert counts["done_before"] == 3 and counts["ran"] == 5
    frame = store.read()
    assert len(frame) == 8
    keys = frame[["method", "repair", "sparsity"]].apply(tuple, axis=1)
    assert keys.is_unique
    assert set(store.outcomes()) == set(frame.run_id)  # every row's outcomes, none orphaned
    assert run_grid(GRID, store, FAST, progress=False)["ran"] == 0


def test_changed_settings_are_new_rows(tmp_path) -> None:
    grid = Grid(("resnet20",), ("synthetic",), ("mp",), ("reflow",), (0.5,))
    run_grid(grid, ResultStore(tmp_path), FAST, progress=False)
    other = Settings(calib_batches=3, calib_batch_size=16, probe_samples=0)
    assert run_grid(grid, ResultStore(tmp_path), other, progress=False)["ran"] == 1
    assert ResultStore(tmp_path).read()["config_hash"].nunique() == 2


def test_failure_in_a_phase_becomes_an_error_row(tmp_path, monkeypatch) -> None:
    def oom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(execute, "repair_phase", oom)
    grid = Grid(("resnet20",), ("synthetic",), ("mp",), ("reflow",), (0.5,))
    counts = run_grid(grid, ResultStore(tmp_path), FAST, progress=False)
    assert counts["errors"] == 1
    frame = ResultStore(tmp_path).read()
    assert "out of memory" in frame.loc[0, "error"]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (
            Grid(("resnet21",), ("synthetic",), ("mp",), ("none",), (0.5,)),
            "valid models: .*resnet20",
        ),
        (
            Grid(("resnet20",), ("mnist",), ("mp",), ("none",), (0.5,)),
            "valid datasets: .*cifar10-jpeg",
        ),
        (
            Grid(("resnet20",), ("synthetic",), ("mpx",), ("none",), (0.5,)),
            "valid methods: .*mp_layer",
        ),
        (Grid(("resnet20",), ("synthetic",), ("mp",), ("fix",), (0.5,)), "valid repairs: .*reflow"),
        (
            Grid(("resnet20",), ("synthetic",), ("mp",), ("none",), (1.0,)),
            r"sparsity must be in \[0, 1\)",
        ),
    ],
)
def test_bad_grid_fails_before_running(grid, message, tmp_path) -> None:
    with pytest.raises(ReflowError, match=message):
        run_grid(grid, ResultStore(tmp_path), FAST, progress=False)
    assert not (tmp_path / "results.csv").exists()


def test_bad_settings() -> None:
    with pytest.raises(ReflowError, match="calib_batches must be at least 1"):
        Settings(calib_batches=0)
    with pytest.raises(ReflowError, match="scope must be one of all, blocks, chita"):
        Settings(scope="convs")
    with pytest.raises(ReflowError, match="eval_samples must be at least 0"):
        Settings(eval_samples=-1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_grid_on_gpu(tmp_path) -> None:
    counts = run_grid(GRID, ResultStore(tmp_path), FAST, device="cuda", progress=False)
    assert counts["errors"] == 0
    assert ResultStore(tmp_path).read()["device"].str.contains("cpu").sum() == 0


def test_dense_bn_reestimation_is_an_explicit_recorded_setting(tmp_path) -> None:
    """CHITA's and M-FAC's scripts re-estimate the dense BN statistics on the train split
    before pruning; here that is a setting (default off) that enters the row identity."""
    from reflow.harness import load_setup

    stored = load_setup("resnet20", "synthetic")
    trained = load_setup("resnet20", "synthetic", dense_bn="train")
    batches = -(-len(trained.data.train) // 128)
    assert int(trained.model.bn1.num_batches_tracked) == batches
    assert not torch.equal(trained.model.bn1.running_mean, stored.model.bn1.running_mean)
    grid = Grid(("resnet20",), ("synthetic",), ("mp",), ("none",), (0.5,))
    store = ResultStore(tmp_path)
    run_grid(grid, store, FAST, progress=False)
    run_grid(grid, store, Settings(**{**FAST.__dict__, "dense_bn": "train"}), progress=False)
    frame = store.read().set_index("dense_bn")
    assert set(frame.index) == {"checkpoint", "train"} and frame.config_hash.nunique() == 2
    assert frame.loc["train", "loss"] != frame.loc["checkpoint", "loss"]


@pytest.mark.parametrize(
    ("pair", "options"),
    [
        (("wf_s", "wf_u"), {"num_grads": "16", "block_size": "64"}),
        (("chita_s", "chita_u"), {"num_grads": "16", "iterations": "5"}),
        (("cbs_s", "cbs_u"), {"num_grads": "16", "iterations": "5"}),
        (("sparsegpt_s", "sparsegpt"), {"samples": "32", "batch_size": "16"}),
    ],
)
def test_a_family_shares_one_search_with_the_same_result(pair, options) -> None:
    """The "-S" member's mask from the shared search equals the one it computes on its own, and
    the "-U" member's weights equal its own run's; the search runs once for both."""
    import copy

    from reflow import baselines
    from reflow.harness import load_setup, prune_context, select_phase
    from reflow.timing import PhaseTimer

    setup = load_setup("resnet20", "synthetic")
    settings = Settings(options={m: options for m in pair})
    selection, update = (baselines.get_method(m, options) for m in pair)
    rows = {}
    for method in (selection, update):
        timer = PhaseTimer()
        rows[method.name] = select_phase(setup, method, 0.7, 0, settings, timer)
        assert rows[method.name][1].info["selection_shared"] == 1
        assert timer.seconds["select"] > 0
    assert len(setup.searches) == 1
    for method in (selection, update):
        alone = copy.deepcopy(setup.model)
        ctx = prune_context(setup, method, 0, settings, PhaseTimer())
        torch.manual_seed(0)
        result = method.prune(alone, 0.7, ctx)
        shared_model, shared = rows[method.name]
        for name, mask in result.masks.items():
            assert torch.equal(mask, shared.masks[name]), (method.name, name)
        alone_weights = dict(alone.named_parameters())
        for name, p in shared_model.named_parameters():
            if name in result.masks:
                expected = alone_weights[name] * result.masks[name]
                torch.testing.assert_close(p, expected, msg=f"{method.name} {name}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_data_free_masks_are_the_same_on_gpu_and_cpu() -> None:
    """Same seed, same masks on either device, for every method that needs no data."""
    from reflow import baselines
    from reflow.harness import load_setup, select_phase
    from reflow.timing import PhaseTimer

    cpu, gpu = (
        load_setup("resnet20", "synthetic"),
        load_setup("resnet20", "synthetic", device="cuda"),
    )
    for name in baselines.list_methods():
        method = baselines.get_method(name)
        if method.needs:
            continue
        _, on_cpu = select_phase(cpu, method, 0.7, 3, Settings(), PhaseTimer())
        _, on_gpu = select_phase(gpu, method, 0.7, 3, Settings(), PhaseTimer("cuda"))
        for layer, mask in on_cpu.masks.items():
            assert torch.equal(mask, on_gpu.masks[layer].cpu()), (name, layer)
