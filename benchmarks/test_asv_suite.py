"""The asv suite: parameterised from the registries, and set-up code that leaves alone the
attributes asv reads from a benchmark (an instance ``timer`` once replaced asv's clock)."""

from __future__ import annotations

import inspect

import pytest
from asv_suite import bench_methods, bench_phases, bench_synthetic
from reflow.baselines import get_method_class, list_methods

from reflow.repairs import list_repairs

#: Attributes asv reads from a benchmark, class or instance, to decide how to run it.
ASV_ATTRIBUTES = {
    "timer",
    "number",
    "repeat",
    "rounds",
    "warmup_time",
    "min_run_count",
    "sample_time",
    "timeout",
    "params",
    "param_names",
    "pretty_name",
    "version",
    "unit",
    "type",
    "setup_cache",
}
CHEAPEST_PARAMS = {
    bench_phases.SelectPhase: ("mp",),
    bench_phases.RepairPhase: ("reflow",),
    bench_phases.EvaluatePhase: (0,),
    bench_synthetic.SyntheticSelect: ("mobilenet_v2", "mp"),
    bench_synthetic.SyntheticRepair: ("mobilenet_v2",),
}


def test_every_benchmark_class_is_checked() -> None:
    classes = {
        cls
        for module in (bench_methods, bench_phases, bench_synthetic)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__
    }
    assert classes == {*CHEAPEST_PARAMS, bench_methods.Methods, bench_methods.DepthwiseMethods}


def test_methods_and_repairs_come_from_the_registries() -> None:
    assert bench_methods.Methods.params[0] == list_methods()
    data_free = [m for m in list_methods() if not get_method_class(m).needs]
    assert bench_phases.SelectPhase.params[0] == data_free
    assert bench_methods.DepthwiseMethods.params[0] == data_free
    assert bench_phases.RepairPhase.params[0] == [r for r in list_repairs() if r != "none"]


def test_method_tracks_read_the_shared_measurements() -> None:
    bench = bench_methods.Methods()
    measured = {
        "mp": {
            "select": 0.5,
            "update": 0.0,
            "memory": 12.0,
            "error_none": 70.2,
            "error_reflow": 29.8,
        }
    }
    assert bench.track_select_seconds(measured, "mp") == 0.5
    assert bench.track_select_memory_mb(measured, "mp") == 12.0
    assert bench.track_top1_error(measured, "mp") == 70.2
    assert bench.track_top1_error_reflow(measured, "mp") == 29.8
    assert bench_methods.Methods.setup_cache.timeout >= 1800


def test_repair_tracks_read_one_timing_per_repair() -> None:
    bench = bench_phases.RepairPhase()
    measured = {"forward": 2.0, "reflow": 5.0}
    assert bench.track_repair_seconds(measured, "reflow") == 5.0
    assert bench.track_repair_over_forward_ratio(measured, "reflow") == 2.5


@pytest.mark.slow
@pytest.mark.parametrize("cls", list(CHEAPEST_PARAMS), ids=lambda cls: cls.__name__)
def test_setup_leaves_asv_attributes_alone(shared_home, cls) -> None:
    bench = cls()
    shared = (bench.setup_cache(),) if hasattr(bench, "setup_cache") else ()
    args = (*shared, *CHEAPEST_PARAMS[cls])
    if hasattr(bench, "setup"):
        bench.setup(*args)
    else:  # only a shared set-up: the benchmark's body must leave them alone too
        body = next(n for n in dir(bench) if n.startswith(("time_", "track_")))
        getattr(bench, body)(*args)
    assert not ASV_ATTRIBUTES & set(vars(bench))
