"""Wall time and peak memory of the default pipeline, ``mlflow run . --env-manager local -P epochs=10``.

    python benchmarks/pipeline.py --data_dir ../shared/data/mnist [-P n_trials=12 ...]

Runs in a fresh temporary folder, MLflow store and Optuna study (so nothing is resumed), reports the wall time, the
peak RSS of the largest process (the training process), the final test accuracies the run logged, the line reader's
training time and test figures, and the registered champion's figures. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data_dir", default=os.environ.get("DIGITS_DATA_DIR", ""), help="MNIST IDX folder (default: $DIGITS_DATA_DIR)"
    )
    parser.add_argument(
        "-P", dest="params", action="append", default=[], help="extra MLproject parameter k=v (default: none)"
    )
    args = parser.parse_args()
    import mlflow

    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        env.pop("MLFLOW_RUN_ID", None)
        command = [
            str(bin_dir / "mlflow"),
            "run",
            str(ROOT),
            "--env-manager",
            "local",
            "-P",
            "epochs=10",
            "-P",
            f"data_dir={args.data_dir}",
            "-P",
            f"storage=sqlite:///{tmp}/optuna.db",
        ]
        for p in args.params:
            command += ["-P", p]
        t0 = time.perf_counter()
        subprocess.run(command, check=True, env=env, cwd=tmp)  # anything written relative to the cwd goes away too
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child, in MiB
        client = mlflow.MlflowClient(uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        final = {
            r.info.run_name: r.data.metrics.get("test_accuracy")
            for r in runs
            if r.data.tags.get("pipeline_step") in ("final", "baseline")
        }
        reader = {  # the line reader's step: its training time and the served reader's test figures
            k: v
            for r in runs
            if r.data.tags.get("pipeline_step") == "reader"
            for k, v in r.data.metrics.items()
            if k.startswith("test_number_") or k in ("train_seconds", "val_exact_match", "number_temperature")
        }
        champion = client.get_model_version_by_alias("digits-cnn", "champion").tags
    result = {
        "wall_seconds": wall,
        "peak_rss_mb": peak_mb,
        "test_accuracy": final,
        "reader": reader,
        "champion_tags": {k: v for k, v in champion.items() if k.startswith("test_")},
        "command": " ".join(command[1:]),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
