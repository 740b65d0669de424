"""The benchmark scripts' contracts: they run on a bare GPU machine (torch and numpy only) and end with one JSON line."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.data

# As on a machine that has PyTorch but not the tracking stack: each import of these fails.
BARE = {"mlflow", "optuna", "sklearn", "pandas", "matplotlib", "tuning", "PIL"}


def test_time_to_accuracy_runs_with_torch_and_numpy_alone_and_ends_with_its_json(mnist_dir):
    code = textwrap.dedent(
        f"""
        import runpy, sys
        for name in {sorted(BARE)!r}:
            sys.modules[name] = None
        sys.argv = ["time_to_accuracy.py", "--data_dir", {str(mnist_dir)!r}, "--schedules", "1", "--skip_reference", "--device", "cpu"]
        runpy.run_path("benchmarks/time_to_accuracy.py", run_name="__main__")
        """
    )
    env = {**os.environ, "PYTHONPATH": ""}  # the script finds `digits` from its own checkout
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    required = {
        "seconds_to_99_0",
        "seconds_to_99_5",
        "final_test_accuracy",
        "images_per_second",
        "reference_seconds_to_99_0",
        "speedup",
    }
    assert required <= set(out)
    (run,) = out["schedules"]["1"]["runs"]
    ((seconds, accuracy),) = run["timeline"]  # one epoch, one evaluation
    assert out["final_test_accuracy"] == accuracy > 0.985  # one epoch of the fast recipe: 99.1-99.4% when measured
    assert out["seconds_to_99_0"] == (seconds if accuracy >= 0.99 else None)
    assert out["seconds_to_99_5"] is None and out["reference_seconds_to_99_0"] is None and out["speedup"] is None
    assert out["images_per_second"] > 0 and out["machine"]["torch"] and out["config"]["batch_size"] == 128


def test_time_to_accuracy_refuses_a_bad_override_in_one_line():
    result = subprocess.run(
        [sys.executable, "benchmarks/time_to_accuracy.py", "--set", "widht=3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("time_to_accuracy.py: error: expected FIELD=VALUE with FIELD one of")
    )
