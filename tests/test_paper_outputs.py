"""Sweeps from TOML, figures and the report, on a small synthetic run."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_sweep

from reflow.cli import main
from reflow.errors import ReflowError
from reflow.grid import Experiment, Grid
from reflow.plan import plan
from reflow.plots import layer_order_levels, plot_all
from reflow.report import claim_rows, claim_variants, evaluate_claims, write_report
from reflow.results import ResultStore
from reflow.settings import Settings
from reflow.sweep import load_sweep
from reflow.tables import accuracy_table, expand_config

#: The repository's root (configs/, benchmarks/).
ROOT = Path(__file__).resolve().parents[1]

SWEEP = """
[[experiment]]
name = "grid"
models = ["resnet20"]
datasets = ["synthetic"]
methods = ["mp", "random"]
repairs = ["none", "reflow"]
sparsities = [0.5, 0.9]
[experiment.settings]
calib_batches = 2
calib_batch_size = 16
probe_samples = 100

[[experiment]]
name = "calibration"
models = ["resnet20"]
datasets = ["synthetic"]
methods = ["mp"]
repairs = ["reflow"]
sparsities = [0.9]
seeds = [0, 1]
[experiment.settings]
calib_batches = [1, 2]
calib_batch_size = 16
probe_samples = 0

[[experiment]]
name = "layer-order"
models = ["resnet20"]
datasets = ["synthetic"]
methods = ["mp"]
repairs = ["reflow"]
sparsities = [0.9]
[experiment.settings]
calib_batches = 2
calib_batch_size = 16
recalibrate_layers = ["first:1", "last:1"]
probe_samples = 0

[[experiment]]
name = "batch-size"
models = ["resnet20"]
datasets = ["synthetic"]
methods = ["mp"]
repairs = ["reflow"]
sparsities = [0.9]
[experiment.settings]
calib_batches = 2
calib_batch_size = 8
probe_samples = 0
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> ResultStore:
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "sweep.toml").write_text(SWEEP)
    experiments = load_sweep(folder / "sweep.toml")
    assert [e.size() for e in experiments] == [8, 4, 2, 1]
    store = ResultStore(folder / "runs")
    assert run_sweep(experiments, store, progress=False)["ran"] == 15
    return store


def test_sweep_resumes_without_duplicates(swept, tmp_path) -> None:
    (tmp_path / "s.toml").write_text(SWEEP)
    counts = run_sweep(load_sweep(tmp_path / "s.toml"), swept, progress=False)
    assert counts == {"done_before": 15, "duplicates": 0, "ran": 0, "errors": 0}
    frame = swept.read()
    assert len(frame) == 15 and frame.run_id.is_unique


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "declares no"),
        (
            "[[experiment]]\nmodels=['resnet20']\ndatasets=['synthetic']\nmethods=['mp']\n",
            "missing",
        ),
        (
            "[[experiment]]\nmodels=['resnet20']\ndatasets=['synthetic']\nmethods=['mp']\n"
            "sparsities=[0.5]\n[experiment.settings]\ncalib_batchez=3\n",
            "unknown settings",
        ),
        (
            "[[experiment]]\nmodels=['resnet20']\ndatasets=['synthetic']\nmethods=['mq']\n"
            "sparsities=[0.5]\n",
            "valid methods",
        ),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_sweep_files(text, message, tmp_path) -> None:
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(ReflowError, match=message):
        load_sweep(tmp_path / "s.toml")


def test_shipped_configs_parse() -> None:
    configs = sorted((ROOT / "configs").rglob("*.toml"))
    assert configs
    for path in configs:
        assert load_sweep(path)


def test_seed_configs_share_seed_zero_with_their_tables() -> None:
    """The seed sweeps' seed-0 rows are their paper table's rows (same options, same keys), so
    a shared results folder computes them once; a drifted option would silently re-run them."""
    folder = ROOT / "configs" / "paper"
    for seeds_file, table_files in [
        ("mobilenet_seeds.toml", ["mobilenet.toml"]),
        ("table1_seeds.toml", ["table1.toml", "layerwise.toml"]),  # obc, sparsegpt: layerwise
    ]:
        seeds = load_sweep(folder / seeds_file)
        table = [e for name in table_files for e in load_sweep(folder / name)]
        seed_zero = sum(len(task.rows) for task in plan(seeds, set()).tasks if task.seed == 0)
        shared = plan(table + seeds, set()).duplicates - plan(table, set()).duplicates
        assert seed_zero > 0 and shared == seed_zero, seeds_file


def test_figures_from_stored_tables_only(swept, tmp_path) -> None:
    written = plot_all(swept.read(), swept.read("probes"), tmp_path)
    for name in (
        "variance",
        "variance-repair",
        "variance-methods",
        "accuracy",
        "hamming",
        "predictions",
        "calibration-batches",
        "batch-size",
        "layer-order",
    ):
        assert written[name], name
        for path in written[name]:
            assert path.stat().st_size > 1000
    assert {p.suffix for p in written["accuracy"]} == {".png", ".pdf"}


def test_layer_order_ends_from_matching_runs(swept) -> None:
    results = expand_config(swept.read())
    order = results[results.recalibrate_layers.str.contains(":")]
    assert len(order) == 2
    levels = layer_order_levels(results, order)
    assert set(levels) == {("none", 0.9), ("reflow", 0.9)}
    full = results[
        (results.method == "mp")
        & (results.repair == "reflow")
        & (results.sparsity == 0.9)
        & (results.recalibrate_layers == "all")
        & (results.calib_batches == 2)
        & (results.calib_batch_size == 16)
        & (results.seed == 0)
    ]
    assert levels[("reflow", 0.9)] == pytest.approx(full.top1.mean())


def test_hamming_column(swept) -> None:
    frame = swept.read()
    assert (frame[frame.method == "mp"].hamming_vs_mp == 0).all()
    assert (frame[frame.method == "random"].hamming_vs_mp > 0.1).all()


def test_report_states_every_claim(swept, tmp_path) -> None:
    out = write_report(swept.folder, tmp_path / "report.md")
    text = out.read_text()
    assert "## Claims" in text and "![accuracy](figures/" in text
    verdicts = evaluate_claims(swept.read(), swept.read("probes"))
    allowed = {"reproduced", "partly reproduced", "indistinguishable", "not reproduced"}
    allowed |= {"incomplete", "not measured", "reported"}
    assert {v.outcome for v in verdicts} <= allowed
    assert any(v.outcome == "not measured" for v in verdicts)  # no wf_u rows here


def test_seed_aggregation_in_table(swept, capsys) -> None:
    assert main(["table", str(swept.folder), "--repair", "reflow", "--method", "mp"]) == 0
    assert "±" in capsys.readouterr().out


def test_table_columns_follow_the_registries_whatever_the_run_order() -> None:
    rows = [("chita_u", "reflow"), ("mp", "reflow"), ("cbs_s", "none"), ("mp", "none")]
    frame = pd.DataFrame(
        [
            {"method": m, "repair": r, "sparsity": 0.5, "top1": 50.0, "config_hash": "x"}
            for m, r in rows
        ]
    )
    mean, _ = accuracy_table(frame)
    assert list(mean.columns) == ["mp", "mp+reflow", "chita_u+reflow", "cbs_s"]


def test_cli_sweep_plot_report(tmp_path, capsys) -> None:
    (tmp_path / "s.toml").write_text(
        SWEEP.split("[[experiment]]")[0] + "[[experiment]]" + SWEEP.split("[[experiment]]")[2]
    )
    assert (
        main(["sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "r"), "--no-progress"])
        == 0
    )
    assert (
        main(
            [
                "plot",
                str(tmp_path / "r"),
                "--out",
                str(tmp_path / "f"),
                "--only",
                "calibration-batches",
            ]
        )
        == 0
    )
    assert "fig11" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "rep" / "r.md")]) == 0
    assert pd.io.common.file_exists(str(tmp_path / "rep" / "r.md"))


def stored_config(method: str, repair: str, options: dict | None = None, **settings) -> str:
    """The stored full config of a row run with these method options and settings."""
    import json

    from reflow import baselines
    from reflow.identity import full_config
    from reflow.repairs import get_repair
    from reflow.settings import Settings

    chosen = baselines.get_method(method, options or {}).config
    return json.dumps(full_config(chosen, get_repair(repair).config, Settings(**settings)))


def test_claims_use_the_default_configuration_or_the_one_a_sweep_ran(swept) -> None:
    """Claims read default rows; a method that ran only with other options (CHITA with 250
    gradients on MobileNet) is tested with those, and named; setting variants never mix in."""
    frame = swept.read()
    grid = frame[(frame.experiment == "grid") & (frame.method == "mp")]

    def rows_of(name: str, options: dict, **settings) -> pd.DataFrame:
        """The grid's mp rows, relabelled as ``name`` run with these options and settings."""
        out = grid.copy()
        configs = {r: stored_config(name, r, options, **settings) for r in out.repair.unique()}
        out["config"] = out.repair.map(configs)
        out["method"] = name
        out["run_id"] = out.run_id + f"{name}{options}{settings}"
        return out

    mp = rows_of("mp", {})
    only_variant = rows_of("chita_u", {"num_grads": "250"})
    blocks = rows_of("chita_u", {}, scope="blocks")
    rows, _ = claim_rows(pd.concat([mp, only_variant, blocks]), pd.DataFrame(), "resnet20")
    assert len(rows[rows.method == "mp"]) == len(mp)
    assert len(rows[rows.method == "chita_u"]) == len(only_variant)  # scope=blocks never mixed
    assert claim_variants(rows) == {"chita_u": "num_grads=250"}
    default = rows_of("chita_u", {})
    rows, _ = claim_rows(pd.concat([mp, only_variant, default]), pd.DataFrame(), "resnet20")
    assert claim_variants(rows) == {}
    assert set(rows[rows.method == "chita_u"].run_id) == set(default.run_id)


def default_configs(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` relabelled as run with every default setting (claims read only those)."""
    out = rows.copy()
    pairs = list(zip(out.method, out.repair, strict=True))
    configs = {pair: stored_config(*pair) for pair in set(pairs)}
    out["config"] = [configs[pair] for pair in pairs]
    return out


def augmented_copies(rows: pd.DataFrame, top1: float) -> pd.DataFrame:
    """``rows`` as if calibrated on augmented images (new run ids, given top-1)."""
    import json

    out = rows.copy()
    out["config"] = [json.dumps(json.loads(c) | {"calib_augment": True}) for c in out.config]
    out["run_id"] = out.run_id + "-augmented"
    out["top1"] = top1
    return out


def test_each_reading_of_the_calibration_images_gets_its_own_rows(swept) -> None:
    """Augmented REFLOW rows replace the un-augmented ones under the augmented reading only; rows
    that read no calibration image serve both; an augmented no-repair row serves neither."""
    from reflow.report import has_reading, reading_rows

    frame = swept.read()
    grid = default_configs(frame[(frame.experiment == "grid") & (frame.method == "mp")])
    augmented = augmented_copies(grid, 0.0)
    both = pd.concat([grid, augmented])
    assert not has_reading(grid, "resnet20", "augmented")
    assert has_reading(both, "resnet20", "augmented")
    for reading, source in (("un-augmented", grid), ("augmented", augmented)):
        rows, _ = claim_rows(both, pd.DataFrame(), "resnet20", reading)
        assert set(rows[rows.repair == "reflow"].run_id) == set(
            source[source.repair == "reflow"].run_id
        )
        assert set(rows[rows.repair == "none"].run_id) == set(grid[grid.repair == "none"].run_id)
    rows = reading_rows(expand_config(both), "augmented")
    assert not rows.calib_augment.any() and "-augmented" not in "".join(
        rows[rows.repair == "none"].run_id
    )
    with pytest.raises(ValueError, match="unknown reading"):
        reading_rows(expand_config(grid), "shifted")


def test_report_decides_each_claim_under_both_readings(swept) -> None:
    """Both outcome columns, and exactly the claims whose verdict differs listed as changed."""
    from reflow.report import _claims_section

    frame = swept.read()
    grid = default_configs(frame[frame.experiment == "grid"])
    both = pd.concat([grid, augmented_copies(grid[grid.repair == "reflow"], 0.0)])
    probes = swept.read("probes")
    text = "\n".join(_claims_section(both, probes, {}, "resnet20"))
    assert "outcome (un-augmented) | outcome (augmented)" in text
    default = evaluate_claims(both, probes, reading="un-augmented")
    augmented = evaluate_claims(both, probes, reading="augmented")
    changed = [a.claim for a, b in zip(default, augmented, strict=True) if a.outcome != b.outcome]
    assert changed, "REFLOW at 0% top-1 must change some verdict"
    assert f"Verdicts that the reading changes: {len(changed)} of {len(default)}:" in text
    assert all(f"- {claim}" in text for claim in changed)
    alone = "\n".join(_claims_section(grid, probes, {}, "resnet20"))
    assert "outcome (augmented)" not in alone and "No augmented-calibration rows" in alone


def test_every_method_has_its_own_colour_and_marker() -> None:
    """tab10 modulo 10 gave mp and chita_s one colour: the two curves Figs. 6 and 10 compare."""
    from reflow.baselines import list_methods

    from reflow.plots import method_style

    styles = [method_style(m) for m in list_methods()]
    assert len({(s["color"], s["marker"]) for s in styles}) == len(styles)
    assert len({s["color"] for s in styles}) == min(len(styles), 20)
    assert method_style("mp")["color"] != method_style("chita_s")["color"]
    assert method_style("not-registered") == method_style("not-registered")


@pytest.fixture
def make_reference(monkeypatch):
    """benchmarks/make_reference.py, imported afresh (its module state is patched per test)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.delitem(sys.modules, "make_reference", raising=False)
    import make_reference

    return make_reference


def test_make_reference_refuses_uncommitted_code(make_reference, tmp_path, monkeypatch) -> None:
    """148 of the MobileNet reference rows once came from a `+dirty` tree: no more."""
    started = []
    monkeypatch.setattr(make_reference, "run_experiments", lambda *a, **k: started.append(1))
    monkeypatch.setattr(make_reference, "git_commit", lambda: "0123456789ab+dirty")
    reference = make_reference.REFERENCES["resnet20"]
    with pytest.raises(ReflowError, match=r"commit .*your changes first"):
        make_reference.make_reference(reference, tmp_path / "runs", "cpu")
    assert not started
    # rows an earlier dirty tree computed are refused too, even from a clean tree
    monkeypatch.setattr(make_reference, "git_commit", lambda: "0123456789ab")
    frame = pd.DataFrame({"git_commit": ["0123456789ab+dirty"], "error": [None]})
    monkeypatch.setattr(make_reference, "planned_rows", lambda f, e: frame)
    monkeypatch.setattr(make_reference.ResultStore, "read", lambda self: frame)
    with pytest.raises(ReflowError, match=r"1 rows .* uncommitted code"):
        make_reference.make_reference(reference, tmp_path / "runs", "cpu")


def test_make_reference_refreshes_only_the_methods_named(
    make_reference, tmp_path, monkeypatch
) -> None:
    """--methods recomputes those methods' rows and keeps every other row of the file as it is
    (a method whose numbers moved does not rerun the whole grid); a method the reference does not
    hold, or a file not made yet, is refused before anything runs."""
    monkeypatch.setattr(make_reference, "HERE", tmp_path)
    monkeypatch.setattr(make_reference, "git_commit", lambda: "0123456789ab")
    monkeypatch.setattr("reflow.execute.git_commit", lambda: "0123456789ab")
    grid = Grid(("resnet20",), ("synthetic",), ("mp", "random"), ("none",), (0.5,), (0,))
    settings = Settings(calib_batches=2, calib_batch_size=16, probe_samples=100)
    reference = make_reference.Reference(
        "resnet20",
        lambda: [Experiment("ref", grid, (settings,))],
        ci_sparsities=(0.5,),
        methods=("mp", "random"),
        dataset="synthetic",
    )
    with pytest.raises(ReflowError, match="does not exist yet"):
        make_reference.make_reference(reference, tmp_path / "runs", "cpu", ("random",))
    with pytest.raises(ReflowError, match="--methods obc: not in the resnet20 reference"):
        make_reference.make_reference(reference, tmp_path / "runs", "cpu", ("obc",))
    first = make_reference.make_reference(reference, tmp_path / "runs", "cpu")
    assert sorted(first.method) == ["mp", "random"]
    # the rows' probes beside them: one per normalisation layer, keyed like their row
    probes = reference.read_probes()
    assert list(probes.columns) == make_reference.PROBE_COLUMNS
    assert probes.groupby("method").size().to_dict() == {"mp": 19, "random": 19}  # ResNet-20's BNs
    keys = ["method", "repair", "sparsity", "seed", "config_hash"]
    assert len(probes.merge(first[keys], on=keys)) == len(probes)
    # a stale file: both rows edited; only the refreshed method's row is recomputed
    stale = first.assign(top1=[-1.0, -2.0], extra="kept").drop(columns=["top5"])
    stale.to_csv(reference.path, index=False)
    probes.assign(ratio=-1.0).to_csv(reference.probes_path, index=False)
    fresh = make_reference.make_reference(reference, tmp_path / "runs", "cpu", ("random",))
    refreshed = reference.read_probes().set_index(["method", "norm_index"]).ratio
    assert (refreshed["mp"] == -1.0).all()
    assert (refreshed["random"] == probes.set_index(["method", "norm_index"]).ratio["random"]).all()
    written = pd.read_csv(reference.path)
    assert list(written.columns) == list(stale.columns)  # the file's layout, not COLUMNS
    by_method = written.set_index("method")
    assert by_method.loc["mp", "top1"] == stale.set_index("method").loc["mp", "top1"]
    assert by_method.loc["random", "top1"] == first.set_index("method").loc["random", "top1"]
    assert (written.extra.isna() == (written.method == "random")).all()
    assert len(fresh) == 2
    # a reference recorded before probes were kept gets none from a refresh (not a partial file)
    reference.probes_path.unlink()
    make_reference.make_reference(reference, tmp_path / "runs", "cpu", ("random",))
    assert not reference.probes_path.exists()
