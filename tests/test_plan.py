"""Planning: every setting is checked against the models before any row runs, rows are keyed by
their non-default configuration only, and shared rows are planned once."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import run_grid

from reflow import baselines, execute
from reflow.errors import ReflowError
from reflow.grid import Grid
from reflow.identity import config_hash, identity
from reflow.options import option
from reflow.plan import (
    Experiment,
    family_batches,
    plan,
    planned_rows,
    row_config_hash,
    validate,
)
from reflow.repairs import get_repair
from reflow.results import ResultStore
from reflow.runner import run_experiments
from reflow.settings import Settings

GRID = Grid(("resnet20",), ("synthetic",), ("mp",), ("none", "reflow"), (0.5,))
FAST = Settings(calib_batches=1, calib_batch_size=8, probe_samples=0)


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if any row starts (a model load is the first expensive step)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a row started before the bad input was reported")

    monkeypatch.setattr(execute, "load_setup", refuse)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"wfu": {"num_grads": "8"}}, "neither a method nor a repair"),
        ({"wf_u": {"num_grads": "8"}}, "method 'wf_u', which this run does not include"),
        ({"mp": {"nothing": "1"}}, "has no option 'nothing'"),
    ],
)
def test_options_for_names_outside_the_grid_are_errors(tmp_path, options, message, no_loading):
    settings = dataclasses.replace(FAST, options=options)
    with pytest.raises(ReflowError, match=message):
        run_grid(GRID, ResultStore(tmp_path), settings, progress=False)
    assert ResultStore(tmp_path).count() == 0


def test_fixed_options_are_refused(tmp_path, no_loading) -> None:
    grid = dataclasses.replace(GRID, methods=("obd",))
    settings = dataclasses.replace(FAST, options={"obd": {"block_size": "4"}})
    with pytest.raises(ReflowError, match=r"obd.block_size is fixed at 1"):
        run_grid(grid, ResultStore(tmp_path), settings, progress=False)


def test_recalibrate_layers_beyond_the_model_fail_before_any_row(tmp_path, no_loading) -> None:
    settings = dataclasses.replace(FAST, recalibrate_layers="last:99")
    with pytest.raises(ReflowError, match="asks for 99 layers but the model has 19"):
        run_grid(GRID, ResultStore(tmp_path), settings, progress=False)


def test_a_repair_that_cannot_apply_is_refused_before_any_row(tmp_path, no_loading) -> None:
    grid = dataclasses.replace(GRID, models=("resnet20_ln",), repairs=("none", "reflow"))
    with pytest.raises(ReflowError, match=r"repair reflow cannot run on resnet20_ln: .*GroupNorm"):
        run_grid(grid, ResultStore(tmp_path), FAST, progress=False)


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        (
            "chita_u",
            {"num_grads": "2000", "memory_limit_gb": "0.5"},
            r"2,000 gradients × 268,336 weights.*needs 4.0 GiB",
        ),
        ("cbs_s", {"num_grads": "2000", "memory_limit_gb": "0.5"}, r"lower cbs_s.num_grads"),
        ("mfac", {"num_grads": "500", "memory_limit_gb": "0.1"}, r"M-FAC's gradient blocks"),
        ("obc", {"inputs": "dense", "memory_limit_gb": "0.0001"}, r"obc.inputs=sequential"),
    ],
)
def test_memory_a_method_cannot_have_is_refused_before_any_row(
    tmp_path, no_loading, method, options, message
) -> None:
    grid = dataclasses.replace(GRID, methods=(method,))
    settings = dataclasses.replace(FAST, options={method: options})
    with pytest.raises(ReflowError, match=f"method {method} on resnet20: .*{message}"):
        run_grid(grid, ResultStore(tmp_path), settings, progress=False)
    assert ResultStore(tmp_path).count() == 0


def test_free_memory_is_checked_when_the_device_is_the_cpu(monkeypatch, no_loading) -> None:
    from reflow import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)
    grid = dataclasses.replace(GRID, methods=("chita_u",))
    with pytest.raises(ReflowError, match=r"but cpu has 0.0 GiB free"):
        validate([Experiment("x", grid, (FAST,))], device="cpu")
    validate([Experiment("x", grid, (FAST,))], device="auto")  # a worker's GPU: limit only


def test_missing_data_is_reported_before_any_row(tmp_path, no_loading) -> None:
    grid = dataclasses.replace(GRID, datasets=("cifar10-jpeg",))
    with pytest.raises(ReflowError, match="data folder not found"):
        validate([Experiment("x", grid, (FAST,))], tmp_path / "nowhere")


def test_identity_holds_only_non_default_values() -> None:
    mp, none = baselines.get_method("mp"), get_repair("none")
    assert identity(mp.config, none.config, Settings()) == {}
    assert row_config_hash("mp", "none", Settings()) == config_hash({})
    changed = Settings(calib_batches=10)
    assert identity(mp.config, none.config, changed) == {"calib_batches": 10}
    # an option set to its default value is the same row as one left unset
    wf_default = Settings(options={"wf_u": {"num_grads": "1000"}})
    assert row_config_hash("wf_u", "none", wf_default) == row_config_hash(
        "wf_u", "none", Settings()
    )
    assert row_config_hash("wf_u", "none", Settings(options={"wf_u": {"num_grads": "10"}})) != (
        row_config_hash("wf_u", "none", Settings())
    )


def test_a_new_option_with_a_default_keeps_every_identity(monkeypatch) -> None:
    """OpenLTH's rule: adding an option that defaults to "no effect" re-keys no stored row."""
    cls = baselines.get_method_class("wf_u")
    before = row_config_hash("wf_u", "reflow", Settings())

    @dataclasses.dataclass(frozen=True)
    class Extended(cls.Config):
        new_option: int = option(0, "an option added later")

    monkeypatch.setattr(cls, "Config", Extended)
    assert row_config_hash("wf_u", "reflow", Settings()) == before


def test_rows_shared_by_experiments_are_planned_once() -> None:
    a = Experiment("a", GRID, (FAST,))
    b = Experiment("b", dataclasses.replace(GRID, repairs=("reflow",)), (FAST,))
    todo = plan([a, b], set())
    assert todo.rows == 2 and todo.duplicates == 1
    assert [len(t.rows) for t in todo.tasks] == [2]  # the rows of one selection form one task


def test_pattern_fixes_the_sparsity_and_needs_a_score_based_method(tmp_path, no_loading) -> None:
    with pytest.raises(ReflowError, match=r"pattern 2:4 fixes the sparsity at 0.5"):
        validate(
            [
                Experiment(
                    "x", dataclasses.replace(GRID, sparsities=(0.7,)), (Settings(pattern="2:4"),)
                )
            ]
        )
    with pytest.raises(ReflowError, match="mp_mt does not select by per-weight scores"):
        validate(
            [
                Experiment(
                    "x", dataclasses.replace(GRID, methods=("mp_mt",)), (Settings(pattern="2:4"),)
                )
            ]
        )


def test_family_members_are_planned_side_by_side() -> None:
    grid = dataclasses.replace(
        GRID, methods=("chita_s", "mp", "chita_u"), repairs=("none",), sparsities=(0.5, 0.8)
    )
    order = [
        (t.method.name, t.sparsity) for t in plan([Experiment("x", grid, (FAST,))], set()).tasks
    ]
    assert order == [
        ("chita_s", 0.5),
        ("chita_u", 0.5),
        ("chita_s", 0.8),
        ("chita_u", 0.8),
        ("mp", 0.5),
        ("mp", 0.8),
    ]


def test_family_members_are_batched_for_one_worker() -> None:
    grid = Grid(
        ("resnet20",),
        ("synthetic",),
        ("mp", "chita_s", "cbs_u", "chita_u", "cbs_s"),
        ("none",),
        (0.5, 0.8),
    )
    batches = family_batches(plan([Experiment("x", grid, (FAST,))], set()).tasks)
    shapes = [tuple((t.method.name, t.sparsity) for t in batch) for batch in batches]
    assert (("chita_s", 0.5), ("chita_u", 0.5)) in shapes
    assert (("cbs_s", 0.8), ("cbs_u", 0.8)) in shapes
    assert (("mp", 0.5),) in shapes and len(batches) == 6
    # members with different options run different searches: not batched
    options = {"chita_s": {"num_grads": "8"}}
    apart = plan([Experiment("x", grid, (dataclasses.replace(FAST, options=options),))], set())
    assert all(
        len(b) == 1 or b[0].method.name.startswith("cbs") for b in family_batches(apart.tasks)
    )


def test_planned_rows_are_one_experiments_rows_of_a_shared_store(tmp_path) -> None:
    """Gates share one store: the same method and sparsity on another model (or another repair)
    is not the experiment's row, in the results and in the tables keyed by them."""
    settings = dataclasses.replace(FAST, probe_samples=16)
    mine = Experiment("mine", dataclasses.replace(GRID, repairs=("none",)), (settings,))
    other = Experiment("other", dataclasses.replace(GRID, models=("mobilenet_v1",)), (settings,))
    store = ResultStore(tmp_path)
    run_experiments([mine, other], store, progress=False)
    for table in ("results", "probes"):
        everything, rows = store.read(table), planned_rows(store.read(table), [mine])
        assert set(everything.model) == {"resnet20", "mobilenet_v1"}
        assert set(rows.model) == {"resnet20"} and set(rows.repair) == {"none"}
    assert len(planned_rows(store.read(), [mine])) == 1
    assert len(planned_rows(store.read(), [mine, other])) == 3
