import re
import subprocess

import pytest
import yaml

from tests.conftest import ROOT, digits_command
from workflow.cli import build_parser


def _subcommands():
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def _flags(subparser):
    return {opt for action in subparser._actions for opt in action.option_strings}


@pytest.mark.unit
def test_every_mlproject_parameter_reaches_its_command_and_the_cli():
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    subcommands = _subcommands()
    for name, entry in project["entry_points"].items():
        command = entry["command"]
        sub = command.split()[3]  # python -m digits SUB ...
        assert sub in subcommands, f"entry point {name}: no CLI subcommand {sub}"
        flags = _flags(subcommands[sub])
        for param, spec in entry.get("parameters", {}).items():
            assert f"--{param} {{{param}}}" in command, (
                f"entry point {name}: parameter {param} does not reach its command"
            )
            assert f"--{param}" in flags, f"entry point {name}: the CLI has no flag --{param}"
            default = subcommands[sub].get_default(param)
            assert str(spec["default"]).lower() == str(default).lower() or float(spec["default"]) == float(default), (
                name,
                param,
            )
        assert set(re.findall(r"\{(\w+)\}", command)) == set(entry.get("parameters", {})), (
            f"{name}: command uses undeclared parameters"
        )


@pytest.mark.unit
def test_every_flag_states_its_default():
    for name, sub in _subcommands().items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert "(default:" in (action.help or ""), (
                    f"digits {name} {action.option_strings[0]} does not state its default"
                )


def _run(*args, env=None):
    return subprocess.run(digits_command(*args), capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


@pytest.mark.unit
@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "-1"], "epochs must be an integer from 1 to 1000, got -1"),
        (["--epochs", "abc"], "argument --epochs: expected an integer, got 'abc'"),
        (["--epochs", "2.5"], "expected an integer, got '2.5'"),
        (["--device", "tpu"], "device must be one of auto, cpu, cuda, mps, got 'tpu'"),
        (["--lr", "nan"], "expected a finite number"),
        (["--batch_norm", "maybe"], "expected a boolean"),
    ],
)
def test_bad_values_give_one_line_and_exit_2(args, message):
    result = _run("train", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def _store_runs(uri):
    import mlflow

    client = mlflow.MlflowClient(uri)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


@pytest.mark.data
def test_wrong_data_dir_is_one_line_and_logs_nothing(tmp_path, tracking_uri):
    result = _run("train", "--data_dir", str(tmp_path / "missing"), "--epochs", "1")
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"digits train: error: data_dir {tmp_path / 'missing'} does not exist or is not a directory"
    )
    assert "Traceback" not in result.stderr
    assert _store_runs(tracking_uri) == []


@pytest.mark.data
def test_truncated_idx_file_is_one_line_and_logs_nothing(fake_mnist_dir, tracking_uri):
    path = fake_mnist_dir / "train-images-idx3-ubyte.gz"
    import gzip

    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    result = _run("main", "--data_dir", str(fake_mnist_dir), "--val_size", "200", "--epochs", "1", "--n_trials", "0")
    assert result.returncode == 1
    assert re.search(r"train-images-idx3-ubyte.gz: truncated", result.stderr.strip().splitlines()[-1])
    assert "Traceback" not in result.stderr
    assert _store_runs(tracking_uri) == []


@pytest.mark.unit
def test_help_lists_subcommands():
    result = _run("--help")
    assert result.returncode == 0
    for sub in ("main", "train", "baseline"):
        assert re.search(rf"^\s+{sub}\s", result.stdout, re.M)


@pytest.mark.data
def test_main_with_a_bad_storage_fails_before_any_run(tmp_path, tracking_uri):
    result = _run("main", "--storage", "postgresql://nobody@127.0.0.1:1/none", "--epochs", "1")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "postgresql://nobody@127.0.0.1:1/none" in result.stderr
    assert _store_runs(tracking_uri) == []


@pytest.mark.unit
def test_parse_overrides_types_values_by_field_and_refuses_bad_ones():
    from digits.core.config import ConfigError, TrainConfig
    from workflow.flags import parse_overrides

    assert parse_overrides(
        TrainConfig, ["lr=0.08", "width=24", "batch_norm=false", "optimizer=adamw", "epochs=10.0"]
    ) == {
        "lr": 0.08,
        "width": 24,
        "batch_norm": False,
        "optimizer": "adamw",
        "epochs": 10,
    }
    for item, message in (
        ("widht=24", "FIELD one of"),
        ("lr", "FIELD=VALUE"),
        ("width=2.5", "width: expected an integer"),
        ("lr=nan", "lr: expected a finite number"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_overrides(TrainConfig, [item])


@pytest.mark.unit
def test_main_and_tune_entry_points_expose_every_field_that_defines_a_run_or_a_study():
    from dataclasses import fields

    from digits.core.config import ReaderConfig, SearchConfig, TrainConfig

    project = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    train, search = {f.name for f in fields(TrainConfig)}, {f.name for f in fields(SearchConfig)}
    reader = {f.name for f in fields(ReaderConfig)}
    assert set(project["main"]["parameters"]) == train | search | reader | {"model_name"}
    assert set(project["reader"]["parameters"]) == reader
    # A study started by main continues under `-e tune` with the same settings; a trial's length is trial_epochs.
    assert set(project["tune"]["parameters"]) == (train - {"epochs"}) | search | reader | {"target"}
    assert set(project["train"]["parameters"]) == train


@pytest.mark.unit
def test_tune_refuses_epochs_instead_of_ignoring_it():
    result = _run("tune", "--epochs", "3")
    assert result.returncode == 2
    assert result.stderr.strip() == "digits: error: unrecognized arguments: --epochs 3 (see --help)"


@pytest.mark.unit
def test_an_interrupt_waits_out_the_held_block_and_raises_in_the_next_released_one_or_at_its_end():
    from digits.core import interrupts

    reached = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.interrupts_held():
            interrupts.interrupt(KeyboardInterrupt())  # as if in the middle of Optuna's bookkeeping: kept
            interrupts.interrupt(interrupts.RunInterrupted("second"))  # the first one wins
            reached.append("after the signal")
            with interrupts.interrupts_released():  # a trial's body: the waiting interrupt raises first
                reached.append("never")
    assert reached == ["after the signal"]
    with pytest.raises(interrupts.RunInterrupted):
        with interrupts.interrupts_held():
            interrupts.interrupt(interrupts.RunInterrupted("at the end"))
            reached.append("no trial followed")
    assert reached[-1] == "no trial followed"
    with pytest.raises(KeyboardInterrupt):
        interrupts.interrupt(KeyboardInterrupt())  # outside: at once
    with interrupts.interrupts_held():
        pass  # nothing left waiting from the cases above


@pytest.mark.unit
def test_a_dataset_logged_by_several_workers_at_once_is_retried_and_other_errors_are_not(monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    from digits.mlops import tracking
    from tests.conftest import fake_mnist

    calls = []

    def log_input(dataset, context=None):
        calls.append(context)
        if len(calls) <= 2:
            raise MlflowException(
                '(psycopg.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"'
            )

    monkeypatch.setattr(mlflow, "log_input", log_input)
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    tracking.log_dataset(fake_mnist(), "test", None, "testing")
    assert calls == ["testing"] * 3
    monkeypatch.setattr(
        mlflow, "log_input", lambda dataset, context=None: (_ for _ in ()).throw(MlflowException("no such run"))
    )
    with pytest.raises(MlflowException, match="no such run"):
        tracking.log_dataset(fake_mnist(), "test", None, "testing")
