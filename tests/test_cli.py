import pytest

from reflow import baselines
from reflow.cli import main

RUN = [
    "run",
    "--model",
    "resnet20",
    "--dataset",
    "synthetic",
    "--method",
    "mp",
    "--repair",
    "none,reflow",
    "--sparsity",
    "0.5,0.9",
    "--calib-batches",
    "2",
    "--calib-batch-size",
    "16",
    "--probe-samples",
    "100",
    "--no-progress",
]


def test_help_lists_commands(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "table", "collapse", "list"):
        assert command in out


def test_list(capsys) -> None:
    assert main(["list", "--verbose"]) == 0
    out = capsys.readouterr().out
    for word in ("mp", "random", "reflow", "adabn", "bnt", "resnet20", "cifar10-jpeg", "synthetic"):
        assert word in out


def test_run_table_collapse(tmp_path, capsys) -> None:
    assert main([*RUN, "--out", str(tmp_path)]) == 0
    assert "4 rows run (0 with errors)" in capsys.readouterr().out
    assert main([*RUN, "--out", str(tmp_path)]) == 0
    assert "0 rows run (0 with errors), 4 already done" in capsys.readouterr().out
    assert main(["table", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| sparsity |" in out.replace("  ", " ").replace("  ", " ") or "sparsity" in out
    assert "mp+reflow" in out and "**" in out
    assert main(["table", str(tmp_path), "--format", "latex"]) == 0
    assert r"\textbf{" in capsys.readouterr().out
    assert (
        main(
            [
                "collapse",
                str(tmp_path),
                "--model",
                "resnet20",
                "--method",
                "mp",
                "--sparsity",
                "0.9",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "layer3.2.bn2" in out and "reflow" in out and "layers emptied" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "magnitude"], "unknown method 'magnitude'; valid methods:"),
        (["--sparsity", "1.2"], "sparsity must be in [0, 1)"),
        (["--set", "mp.nothing=1"], "has no option 'nothing'"),
        (["--set", "broken"], "--set takes NAME.OPTION=VALUE"),
        (["--checkpoint", "/no/such/file.pt"], "checkpoint file not found"),
    ],
)
def test_bad_input_exits_2_with_one_clear_message(args, message, tmp_path, capsys) -> None:
    argv = [*RUN, "--out", str(tmp_path / "out"), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_table_on_missing_folder(tmp_path, capsys) -> None:
    assert main(["table", str(tmp_path / "nope")]) == 2
    assert "no results in" in capsys.readouterr().err


def test_every_command_has_help_with_examples_and_there_is_a_version(capsys) -> None:
    import reflow

    commands = ["run", "sweep", "prune", "table", "collapse", "plot", "report", "export"]
    for command in [*commands, "merge", "list", "compare"]:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert "examples:\n  reflow " + command in out, command
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"reflow {reflow.__version__} (reflow-bench)"


def test_settings_are_declared_once_and_reach_every_flag(capsys) -> None:
    """Each Settings field is a flag of run and prune with its declared default and help, is
    listed by `reflow list -v`, and a flag's value reaches the Settings object."""
    from reflow.cli import _settings, build_parser
    from reflow.settings import Settings, setting_fields

    parser = build_parser()
    for command in ("run", "prune"):
        base = [command, "--model", "resnet20", "--dataset", "synthetic", "--sparsity", "0.5"]
        base += ["--out" if command == "run" else "--save", "x"]
        assert _settings(parser.parse_args(base)) == Settings()
        changed = parser.parse_args([*base, "--calib-batches", "7", "--dense-bn", "train"])
        assert _settings(changed) == Settings(calib_batches=7, dense_bn="train")
    assert main(["list", "-v"]) == 0
    listed = capsys.readouterr().out
    for f in setting_fields():
        assert f"--{f.name.replace('_', '-')}" in listed and f.metadata["help"] in listed
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--model", "m", "--dataset", "d", "--out", "x", "--scope", "x"])


def test_declared_choices_and_bounds_hold_for_every_registered_config() -> None:
    """Every method's and executor's declared choices and bounds are enforced, including on
    options a subclass redefines (OBC's damp and inputs keep their base class's declarations)."""
    import dataclasses

    from reflow.errors import ReflowError
    from reflow.executors import EXECUTORS
    from reflow.options import _declared
    from reflow.repairs import REPAIRS

    checked = 0
    for registry in (baselines.METHODS, REPAIRS, EXECUTORS):
        for name, cls in registry.items():
            for f in dataclasses.fields(cls.Config):
                meta = _declared(cls.Config, f)
                if meta.get("fixed"):
                    continue
                bad = []
                if meta.get("choices"):
                    bad.append("no-such-choice")
                if meta.get("minimum") is not None:
                    bad.append(str(meta["minimum"] - 1))
                if meta.get("maximum") is not None:
                    bad.append(str(meta["maximum"] + 1))
                for value in bad:
                    options = {f.name: value} | ({"folder": "f"} if name == "submitit" else {})
                    with pytest.raises(ReflowError, match=f"{name}: {f.name} must be"):
                        registry.build(name, options)
                    checked += 1
    assert checked >= 40
