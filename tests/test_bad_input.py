"""Bad or hostile input: one line on stderr, exit status 2, before anything is written; and the
wrong results, lost files and open doors issue 19 found, each with a test that failed before."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reflow import api
from reflow.cifar_resnet import cifar_resnet
from reflow.cli import main
from reflow.data import CIFAR10_CLASSES, _fingerprint, _image_files
from reflow.errors import ReflowError
from reflow.results import ResultStore
from reflow.zoo import sha256_of

FAST = [
    "--dataset",
    "synthetic",
    "--method",
    "mp",
    "--repair",
    "none",
    "--sparsity",
    "0.5",
    "--eval-samples",
    "40",
    "--probe-samples",
    "0",
    "--device",
    "cpu",
    "--no-progress",
]


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str], match: str) -> str:
    """Run the CLI; it must fail with exit 2 and one stderr line matching ``match``."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]  # progress bars (decoding) may come first
    assert last.startswith("reflow: error: "), err
    assert __import__("re").search(match, last), err
    return last


def save_model(path: Path, seed: int = 0, model: torch.nn.Module | None = None) -> Path:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save((model or cifar_resnet(20)).state_dict(), path)
    return path


# -- 1. silent wrong results --------------------------------------------------------------------


def test_two_checkpoints_with_one_file_name_are_two_rows(tmp_path, capsys) -> None:
    """Before: the second run printed "0 rows run, 1 already done" and reported a's numbers."""
    a = save_model(tmp_path / "a" / "model.pt", seed=1)
    b = save_model(tmp_path / "b" / "model.pt", seed=2)
    out = tmp_path / "runs"
    for path in (a, b):
        assert (
            main(
                ["run", "--model", "resnet20", "--checkpoint", str(path), *FAST, "--out", str(out)]
            )
            == 0
        )
        assert "1 rows run" in capsys.readouterr().out
    rows = ResultStore(out).read()
    assert len(rows) == 2 and rows.checkpoint.nunique() == 2
    assert set(rows.checkpoint_label) == {"model.pt"}
    assert rows.dense_top1.nunique() == 2 or rows.loss.nunique() == 2


def test_non_finite_checkpoint_is_refused_before_any_row(tmp_path, capsys) -> None:
    model = cifar_resnet(20)
    with torch.no_grad():
        model.linear.weight[3, 5] = float("inf")
    path = save_model(tmp_path / "inf.pt", model=model)
    out = tmp_path / "runs"
    one_line_error(
        capsys,
        ["run", "--model", "resnet20", "--checkpoint", str(path), *FAST, "--out", str(out)],
        r"'linear.weight' has 1 non-finite",
    )
    assert not out.exists()


def test_non_finite_module_is_refused_by_the_api() -> None:
    model = cifar_resnet(20)
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ReflowError, match=r"'conv1.weight' has 1 non-finite"):
        api.prune(model, 0.5, repair="none")


@pytest.mark.parametrize("seed", ["1.9", "-1", str(2**64), "true"])
def test_seeds_are_integers_in_range(tmp_path, capsys, seed) -> None:
    sweep = tmp_path / "s.toml"
    sweep.write_text(
        f'[[experiment]]\nmodels = ["resnet20"]\ndatasets = ["synthetic"]\nmethods = ["mp"]\n'
        f"sparsities = [0.5]\nseeds = [{seed}]\n"
    )
    one_line_error(
        capsys, ["sweep", str(sweep), "--out", str(tmp_path / "o")], r"seeds are integers in \[0"
    )
    assert not (tmp_path / "o").exists()


def test_seed_flag_out_of_range(tmp_path, capsys) -> None:
    one_line_error(
        capsys,
        ["run", "--model", "resnet20", *FAST, "--seed", str(2**64), "--out", str(tmp_path / "o")],
        r"seeds are integers in \[0, 2\*\*63\)",
    )


# -- 2. prune --save never destroys a file ------------------------------------------------------

PRUNE = ["prune", "--model", "resnet20", "--dataset", "synthetic", "--method", "mp"]
PRUNE += ["--sparsity", "0.5", "--repair", "none", "--no-eval", "--device", "cpu"]


@pytest.fixture
def no_work(monkeypatch):
    """Fail loudly if prune starts any work: every refusal must come first."""
    import reflow.prune_command as command

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the save target was checked")

    monkeypatch.setattr(command, "validate", refuse)


def test_prune_refuses_an_existing_target_without_force(tmp_path, capsys, no_work) -> None:
    target = tmp_path / "mine.pt"
    target.write_bytes(b"precious")
    one_line_error(capsys, [*PRUNE, "--save", str(target)], r"exist\(s\); pass --force")
    assert target.read_bytes() == b"precious"
    card = tmp_path / "other.json"
    card.write_text("{}")
    one_line_error(capsys, [*PRUNE, "--save", str(tmp_path / "other.pt")], "other.json exist")


def test_prune_refuses_targets_that_cannot_work(tmp_path, capsys, no_work) -> None:
    one_line_error(capsys, [*PRUNE, "--save", str(tmp_path / "x.json")], "card .* overwrite them")
    (tmp_path / "dir.pt").mkdir()
    one_line_error(capsys, [*PRUNE, "--save", str(tmp_path / "dir.pt")], "is a directory")
    (tmp_path / "file").write_text("")
    one_line_error(capsys, [*PRUNE, "--save", str(tmp_path / "file" / "x.pt")], "is a file")


def test_prune_refuses_to_overwrite_its_input_even_with_force(tmp_path, capsys) -> None:
    mine = save_model(tmp_path / "mine.pt")
    before = mine.read_bytes()
    one_line_error(
        capsys,
        [*PRUNE, "--checkpoint", str(mine), "--save", str(mine), "--force"],
        "would overwrite the input checkpoint",
    )
    assert mine.read_bytes() == before


def test_prune_writes_all_files_with_the_umask_and_force_replaces(tmp_path, capsys) -> None:
    target = tmp_path / "p.pt"
    old = os.umask(0o022)
    try:
        assert main([*PRUNE, "--save", str(target), "--save-masks"]) == 0
    finally:
        os.umask(old)
    for f in (target, target.with_suffix(".json"), target.with_suffix(".masks.pt")):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    card = json.loads(target.with_suffix(".json").read_text())
    assert card["state_dict_sha256"] == sha256_of(target)
    assert main([*PRUNE, "--save", str(target), "--sparsity", "0.6", "--force"]) == 0
    assert json.loads(target.with_suffix(".json").read_text())["sparsity"] == 0.6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_a_card_of_another_save_is_detected(tmp_path) -> None:
    model = cifar_resnet(20).eval()
    api.save_pruned(model, tmp_path / "a.pt", {"model": "resnet20"})
    api.save_pruned(cifar_resnet(20).eval(), tmp_path / "b.pt", {"model": "resnet20"})
    (tmp_path / "b.json").replace(tmp_path / "a.json")  # a's weights beside b's card
    with pytest.raises(ReflowError, match="two different saves"):
        api.load_pruned(tmp_path / "a.pt")


def test_prune_interrupt_says_what_happened(monkeypatch, capsys, tmp_path) -> None:
    import reflow.prune_command as command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, "prune_and_save", interrupted)
    assert main([*PRUNE, "--save", str(tmp_path / "x.pt")]) == 130
    assert "no file was written" in capsys.readouterr().err


# -- 3. several processes on one folder ---------------------------------------------------------


def test_a_stale_column_cache_does_not_break_a_second_writer(tmp_path) -> None:
    """Before: the second driver's ALTER TABLE failed with 'duplicate column name'."""
    first, second = ResultStore(tmp_path), ResultStore(tmp_path)
    row = {
        "run_id": "r1",
        "model": "m",
        "checkpoint": "c",
        "dataset": "d",
        "method": "mp",
        "repair": "none",
        "sparsity": 0.5,
        "seed": 0,
        "config_hash": "h",
        "experiment": "x",
    }
    first.add(row)
    second.add({**row, "run_id": "r2", "seed": 1})
    assert len(first.read()) == 2


def test_readers_open_the_store_read_only(tmp_path) -> None:
    ResultStore(tmp_path).close()
    reader = ResultStore(tmp_path, readonly=True)
    with pytest.raises(ReflowError, match="read-only"):
        reader.add({"run_id": "x"})
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.db.execute("CREATE TABLE t (x)")
    with pytest.raises(ReflowError, match="no results in"):
        ResultStore(tmp_path / "missing", readonly=True)
    assert not (tmp_path / "missing").exists()


def test_a_damaged_store_is_refused(tmp_path, capsys) -> None:
    store = ResultStore(tmp_path)
    for i in range(200):
        store.add(
            {
                "run_id": f"r{i}",
                "model": "m" * 200,
                "checkpoint": "c",
                "dataset": "d",
                "method": "mp",
                "repair": "none",
                "sparsity": 0.5,
                "seed": i,
                "config_hash": "h",
            }
        )
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    database = tmp_path / "results.sqlite"
    data = bytearray(database.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\xff" * 4096
    database.write_bytes(bytes(data))
    with pytest.raises(ReflowError, match=r"damaged|not a results store"):
        ResultStore(tmp_path)
    one_line_error(capsys, ["table", str(tmp_path)], "damaged|not a results store")


def _run_driver(out: Path) -> subprocess.Popen:
    grid = ["--method", "mp,random", "--repair", "none,reflow", "--sparsity", "0.5,0.7,0.9"]
    grid += ["--seed", "0,1", "--calib-batches", "1", "--calib-batch-size", "8"]
    argv = [sys.executable, "-m", "reflow.cli", "run", "--model", "resnet20", *FAST[:2], *grid]
    argv += ["--eval-samples", "40", "--probe-samples", "0", "--device", "cpu", "--no-progress"]
    return subprocess.Popen(
        [*argv, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_two_drivers_on_one_new_folder_compute_each_row_once(tmp_path) -> None:
    """Before: one crashed with 'duplicate column name: experiment'; with an existing store,
    both computed every row."""
    out = tmp_path / "shared"
    drivers = [_run_driver(out), _run_driver(out)]
    outputs = [d.communicate(timeout=600) for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], outputs
    rows = ResultStore(out, readonly=True).read()
    assert len(rows) == 24 and not rows.duplicated(["run_id"]).any()
    ran = sum(int(o.split(" rows run")[0].split()[-1]) for o, _ in outputs)
    assert ran == 24, outputs  # every row computed by exactly one driver
    assert rows.worker.nunique() == 2  # and both drivers worked
    claims = sqlite3.connect(out / "results.sqlite").execute("SELECT COUNT(*) FROM claims")
    assert claims.fetchone()[0] == 0  # released when the drivers ended


def test_a_dead_drivers_claims_expire_at_once(tmp_path) -> None:
    from reflow.claims import TaskClaims

    ResultStore(tmp_path).close()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    mine, other = TaskClaims(tmp_path), TaskClaims(tmp_path)
    try:
        assert mine.claim(["t1"]) and not other.claim(["t1"])
        mine.db.execute("UPDATE claims SET pid = ?", (int(dead.stdout),))
        assert other.claim(["t1"])  # its owner's process is gone
        other.db.execute("UPDATE claims SET pid = ?, expires = ?", (os.getpid(), time.time() - 1))
        mine.owner = "someone-else"
        assert mine.claim(["t1"])  # the lease expired
    finally:
        mine.close()
        other.close()


# -- 4. one line, exit 2, before any work -------------------------------------------------------


def test_bad_devices(tmp_path, capsys) -> None:
    out = tmp_path / "o"
    base = ["run", "--model", "resnet20", *FAST[:-3], "--no-progress", "--out", str(out)]
    one_line_error(capsys, [*base, "--device", "banana"], "unknown device 'banana'")
    if not torch.cuda.is_available():
        one_line_error(capsys, [*base, "--device", "cuda:7"], "no CUDA device")
    assert not out.exists()


@pytest.mark.parametrize(
    ("model", "dataset", "match"),
    [
        ("resnet50", "cifar10-jpeg", "resnet50 has 1000 outputs but cifar10-jpeg has 10 classes"),
        ("resnet20", "imagenet", "resnet20 has 10 outputs but imagenet has 1000 classes"),
    ],
)
def test_a_model_for_other_data_is_refused_at_planning(
    tmp_path, capsys, model, dataset, match
) -> None:
    """A head with another number of classes would give a top-1 near 0 with exit status 0."""
    argv = ["run", "--model", model, *FAST[:-3], "--no-progress", "--out", str(tmp_path / "o")]
    argv[argv.index("synthetic")] = dataset
    one_line_error(capsys, [*argv, "--checkpoint", "none", "--device", "cpu"], match)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ('sparsities = ["abc"]', "sparsity must be a number"),
        (
            'sparsities = [0.5]\n[experiment.settings]\ncalib_batches = "two"',
            "calib_batches takes an integer",
        ),
        (
            "sparsities = [0.5]\n[experiment.settings]\ncalib_augment = 1",
            "calib_augment takes true or false",
        ),
        ("sparsities = [0.5]\noptions = 3", "options must be a table"),
        ("sparsities = [0.5]\nmodels = [1]", "model names must be strings"),
    ],
)
def test_sweep_values_of_the_wrong_type(tmp_path, capsys, body, match) -> None:
    sweep = tmp_path / "s.toml"
    head = '[[experiment]]\ndatasets = ["synthetic"]\nmethods = ["mp"]\n'
    if "models" not in body:
        head += 'models = ["resnet20"]\n'
    sweep.write_text(head + body + "\n")
    one_line_error(capsys, ["sweep", str(sweep), "--out", str(tmp_path / "o")], match)


def test_experiment_written_as_a_table(tmp_path, capsys) -> None:
    sweep = tmp_path / "s.toml"
    sweep.write_text('[experiment]\nmodels = ["resnet20"]\n')
    one_line_error(
        capsys, ["sweep", str(sweep), "--out", str(tmp_path / "o")], r"\[\[experiment\]\]"
    )


def test_plugin_that_does_not_import(tmp_path, capsys) -> None:
    out = tmp_path / "o"
    argv = ["run", "--model", "resnet20", *FAST, "--out", str(out), "--plugin", "no_such_mod"]
    one_line_error(capsys, argv, "--plugin no_such_mod: cannot import it")
    assert not out.exists()


def test_a_scheduler_that_does_not_answer(tmp_path, capsys) -> None:
    pytest.importorskip("distributed")
    out = tmp_path / "o"
    argv = ["run", "--model", "resnet20", *FAST, "--out", str(out), "--executor", "dask"]
    argv += ["--scheduler", "tcp://127.0.0.1:9", "--executor-set", "connect_timeout=2"]
    start = time.perf_counter()
    one_line_error(capsys, argv, "cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    assert not out.exists() and time.perf_counter() - start < 30


def test_a_huge_grid_is_refused_without_yes(tmp_path, capsys) -> None:
    sparsities = ",".join(f"{i / 1000:.3f}" for i in range(1000))
    seeds = ",".join(str(i) for i in range(101))
    argv = ["run", "--model", "resnet20", "--dataset", "synthetic", "--sparsity", sparsities]
    argv += ["--seed", seeds, "--out", str(tmp_path / "o")]
    one_line_error(capsys, argv, r"declares 202,000 rows, over the 100,000-row limit.*--yes")


def test_calibration_larger_than_the_split(tmp_path, capsys) -> None:
    argv = ["run", "--model", "resnet20", *FAST, "--repair", "reflow", "--out", str(tmp_path / "o")]
    argv += ["--calib-batches", "100", "--calib-batch-size", "128"]
    one_line_error(capsys, argv, r"12,800 images but the synthetic train split has 6,400")


@pytest.fixture
def store_folder(tmp_path) -> Path:
    store = ResultStore(tmp_path / "store")
    store.add(
        {
            "run_id": "r",
            "model": "resnet20",
            "checkpoint": "none",
            "dataset": "synthetic",
            "method": "mp",
            "repair": "none",
            "sparsity": 0.5,
            "seed": 0,
            "config_hash": "h",
            "top1": 10.0,
            "dense_top1": 10.0,
            "config": "{}",
            "error": None,
        }
    )
    store.close()
    return tmp_path / "store"


def test_table_collapse_report_export_merge_errors(store_folder, tmp_path, capsys) -> None:
    folder = str(store_folder)
    one_line_error(capsys, ["table", folder, "--metric", "top7"], "unknown --metric 'top7'.*top1")
    one_line_error(
        capsys, ["collapse", folder, "--sparsity", "0.5"], "no probe rows .*--probe-samples"
    )
    (tmp_path / "file").write_text("")
    one_line_error(
        capsys, ["report", folder, "--out", str(tmp_path / "file" / "r.md")], "is a file"
    )
    one_line_error(capsys, ["export", folder, "--to", str(tmp_path / "file" / "x")], "is a file")
    empty = tmp_path / "empty"
    one_line_error(capsys, ["merge", str(empty)], "no shard files in")
    assert not empty.exists()
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.json").write_text('[{"row": {"model": "m"}}]')
    one_line_error(capsys, ["merge", folder, "--shards", str(shards)], "a row without checkpoint")
    (shards / "a.json").write_text("not json")
    one_line_error(
        capsys, ["merge", folder, "--shards", str(shards)], "a.json is not a reflow shard"
    )


def test_api_refuses_bad_arguments() -> None:
    model = cifar_resnet(20).eval()
    with pytest.raises(ReflowError, match="sparsity must be a number"):
        api.prune(model, "abc", repair="none")
    with pytest.raises(ReflowError, match="calibration= is empty"):
        api.prune(model, 0.5, calibration=[])
    _, report = api.prune(model, 0.5, calibration=[(torch.randn(4, 3, 32, 32), None)])
    assert report.calibration_samples == 4  # images without labels calibrate
    with pytest.raises(ReflowError, match="no labels"):
        api.prune(model, 0.5, method="snip", repair="none", train=[torch.randn(4, 3, 32, 32)])


# -- image folders: empty, corrupt, wrongly sized, edited ---------------------------------------


def _jpeg_folder(root: Path, per_class: int = 2, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in CIFAR10_CLASSES:
            folder = root / "cifar10-jpeg" / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.jpg")
    return root


def _run_on(root: Path, out: Path) -> list[str]:
    argv = ["run", "--model", "resnet20", "--dataset", "cifar10-jpeg", "--checkpoint", "none"]
    argv += ["--method", "mp", "--repair", "none,reflow", "--sparsity", "0.5,0.7"]
    argv += ["--calib-batches", "1", "--calib-batch-size", "4", "--probe-samples", "0"]
    return [*argv, "--data-root", str(root), "--device", "cpu", "--no-progress", "--out", str(out)]


def test_empty_class_folder_is_refused_before_the_store(tmp_path, capsys) -> None:
    root = _jpeg_folder(tmp_path / "data")
    for f in (root / "cifar10-jpeg" / "train" / "cat").iterdir():
        f.unlink()
    one_line_error(capsys, _run_on(root, tmp_path / "o"), r"class folder .*cat holds no images")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("damage", ["corrupt", "wrong size"])
def test_a_bad_image_stops_the_run_naming_the_file(tmp_path, capsys, damage) -> None:
    """Before: one error row per task, and the split decoded again for each task."""
    root = _jpeg_folder(tmp_path / "data")
    bad = root / "cifar10-jpeg" / "test" / "dog" / "0001.jpg"
    if damage == "corrupt":
        bad.write_bytes(b"\xff\xd8 not really a jpeg")
    else:
        Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(bad)
    out = tmp_path / "o"
    one_line_error(capsys, _run_on(root, out), "dog/0001.jpg")
    assert not out.exists() or ResultStore(out, readonly=True).count() == 0


def test_an_edited_image_of_the_same_size_changes_the_cache_key(tmp_path) -> None:
    root = _jpeg_folder(tmp_path / "data", per_class=1)
    files, _, _ = _image_files(root / "cifar10-jpeg" / "test")
    before = _fingerprint(files)
    target = files[3]
    data = bytearray(target.read_bytes())
    data[-3] ^= 1  # same size, other content
    target.write_bytes(bytes(data))
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    assert _fingerprint(files) != before


# -- 5. nobody else in --------------------------------------------------------------------------


def test_the_local_dask_cluster_refuses_unauthenticated_clients() -> None:
    pytest.importorskip("distributed")
    from distributed import Client
    from distributed.security import Security

    from reflow.executors import get_executor

    executor = get_executor("dask", {"workers": "1"})
    cluster = executor._local_cluster()
    try:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        with pytest.raises((OSError, TimeoutError)):  # a certificate of its own: not trusted
            Client(address, security=Security.temporary(), timeout=3)
        with pytest.raises((OSError, TimeoutError)):  # no TLS at all
            Client(address.replace("tls://", "tcp://"), timeout=3)
        with Client(address, security=executor._security, timeout=30) as client:
            assert client.submit(sum, [1, 2]).result() == 3  # the run's own client gets in
    finally:
        cluster.close()


def test_security_file_for_an_existing_cluster(tmp_path) -> None:
    pytest.importorskip("distributed")
    from reflow.executors.dask_executor import load_security

    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("")
    file = tmp_path / "tls.toml"
    file.write_text('ca_file = "ca.pem"\ncert = "cert.pem"\n')
    with pytest.raises(ReflowError, match="lacks key"):
        load_security(str(file))
    file.write_text('ca_file = "ca.pem"\ncert = "cert.pem"\nkey = "nokey.pem"\n')
    with pytest.raises(ReflowError, match=r"key .*nokey.pem not found"):
        load_security(str(file))
    file.write_text('ca_file = "ca.pem"\ncert = "cert.pem"\nkey = "key.pem"\n')
    security = load_security(str(file))
    assert security.require_encryption and security.tls_client_key == str(tmp_path / "key.pem")
    with pytest.raises(ReflowError, match="give --scheduler too"):
        from reflow.executors import get_executor

        get_executor("dask", {"security": str(file)})
