"""Parallel search workers on the stack (PostgreSQL + MLflow tracking server), and what the stack costs per trial.

    python benchmarks/workers.py --data_dir ../shared/data/mnist [--trials 6] [--subset 10000] [--repeats 2]

Starts its own stack (``digits stack up`` in a temporary folder, free ports; purged at the end) and measures:

1. **Throughput**: ``digits tune`` with 1 and with 2 worker processes (``--threads 1`` each) on a fresh study,
   ``--trials`` trials per worker of ``--trial_epochs`` epochs on ``--subset`` images: trials per hour over the
   search (first trial's start to last trial's end, from the study), and over the whole wall time (process starts,
   data loading included).
2. **Overhead per trial**: the real objective (``tuning.objective.Objective``: the trial's MLflow run, params,
   config.json, per-epoch metrics, reports to the pruner, the storage's writes) with ``fit`` replaced by a stub that
   returns at once, ``--overhead_trials`` trials per repeat, on SQLite files (an Optuna and an MLflow sqlite file,
   local artifacts) and on the stack: ms per trial of storage and logging calls alone.

Prints a Markdown table, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _tune_command(args, storage: str, study: str, n_trials: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "digits",
        "tune",
        "--data_dir",
        args.data_dir,
        "--subset",
        str(args.subset),
        "--val_size",
        str(args.val_size),
        "--threads",
        "1",
        "--trial_epochs",
        str(args.trial_epochs),
        "--n_trials",
        str(n_trials),
        "--storage",
        storage,
        "--study_name",
        study,
    ]


def throughput(args, stack, env: dict, workers: int, repeat: int) -> dict:
    """``workers`` processes x ``args.trials`` trials on a new study: trials per hour."""
    import optuna

    study = f"bench-{workers}w-{repeat}-{time.time_ns()}"
    t0 = time.perf_counter()
    processes = [
        subprocess.Popen(
            _tune_command(args, stack.storage_url(), study, args.trials),
            env=env,
            cwd=args.work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    for p in processes:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker failed: {err[-2000:]}")
    wall = time.perf_counter() - t0
    trials = optuna.load_study(study_name=study, storage=args.storage_with_password(stack)).trials
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return {
        "workers": workers,
        "trials": len(trials),
        "search_seconds": span,
        "wall_seconds": wall,
        "trials_per_hour": 3600 * len(trials) / span,
        "trials_per_hour_wall": 3600 * len(trials) / wall,
    }


def overhead(args, optuna_url: str, tracking_uri: str, label: str) -> list[float]:
    """ms per trial of the real objective with a stub ``fit``: storage and logging calls only."""
    import mlflow

    import tuning.objective as objective_mod
    from digits.core.config import SearchConfig, TrainConfig
    from digits.learn.data import load_mnist, split_train_val
    from tuning import search as search_mod

    def stub_fit(config, train, val=None, callbacks=(), model=None):
        history = []
        for epoch in range(1, config.epochs + 1):
            metrics = {
                "train_loss": 1.0,
                "train_accuracy": 0.5,
                "val_loss": 1.0,
                "val_accuracy": 0.5 + 0.01 * epoch,
                "lr": config.lr,
                "images_per_second": 1.0,
                "epoch_seconds": 0.0,
            }
            for callback in callbacks:
                callback(epoch, metrics)
            history.append(metrics)
        return SimpleNamespace(history=history, seconds=0.0)

    objective_mod.fit = stub_fit
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(f"overhead-{label}")
    mnist = load_mnist(args.data_dir)
    split = split_train_val(mnist.train_labels, args.val_size, 0, args.subset)
    base = TrainConfig(subset=args.subset, val_size=args.val_size, threads=1, epochs=args.trial_epochs)
    per_trial = []
    for repeat in range(args.repeats):
        search = SearchConfig(
            n_trials=args.overhead_trials,
            trial_epochs=args.trial_epochs,
            storage=optuna_url,
            study_name=f"overhead-{repeat}-{time.time_ns()}",
        )
        study = search_mod.open_search(base, search, mnist, search_mod.connect(search))
        train = (mnist.train_images[split.train], mnist.train_labels[split.train])
        val = (mnist.train_images[split.val], mnist.train_labels[split.val])
        with mlflow.start_run(run_name="search") as run:
            objective = objective_mod.Objective(base, train, val, search.study_name, run.info.run_id)
            t0 = time.perf_counter()
            study.optimize(objective, n_trials=search.n_trials)
            per_trial.append(1000 * (time.perf_counter() - t0) / search.n_trials)
    return per_trial


def _stats(values: list[float]) -> str:
    return f"{statistics.mean(values):.0f} ± {statistics.stdev(values):.0f}" if len(values) > 1 else f"{values[0]:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data_dir", default=os.environ.get("DIGITS_DATA_DIR", ""), help="MNIST IDX folder (default: $DIGITS_DATA_DIR)"
    )
    parser.add_argument("--trials", type=int, default=6, help="trials per worker (default: 6)")
    parser.add_argument("--subset", type=int, default=10000, help="training images per trial (default: 10000)")
    parser.add_argument("--val_size", type=int, default=5000, help="validation images (default: 5000)")
    parser.add_argument(
        "--trial_epochs",
        type=int,
        default=1,
        help="epochs per trial (default: 1: no pruning, every trial the same work)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="repeats of each measurement (default: 2)")
    parser.add_argument("--overhead_trials", type=int, default=20, help="stub trials per overhead repeat (default: 20)")
    args = parser.parse_args()
    from digits.ops import processes
    from digits.ops import stack as stack_mod

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        args.work = tmp
        os.chdir(tmp)  # MLflow's sqlite store puts a new experiment's artifacts in ./mlruns
        stack = stack_mod.open_stack(Path(tmp) / "stack", processes.free_port(), processes.free_port())
        stack_mod.up(stack)
        password = stack.pgpass.read_text().strip().rsplit(":", 1)[1]
        args.storage_with_password = lambda s: s.storage_url().replace("digits@", f"digits:{password}@")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(
            PGPASSFILE=str(stack.pgpass),
            MLFLOW_TRACKING_URI=stack.tracking_uri,
            PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        )
        os.environ["PGPASSFILE"] = str(stack.pgpass)
        try:
            runs = {w: [throughput(args, stack, env, w, r) for r in range(args.repeats)] for w in (1, 2)}
            cost = {
                "sqlite": overhead(args, f"sqlite:///{tmp}/optuna.db", f"sqlite:///{tmp}/mlflow.db", "sqlite"),
                "stack": overhead(args, stack.storage_url(), stack.tracking_uri, "stack"),
            }
        finally:
            stack_mod.purge(stack)
            os.chdir(cwd)
    print(
        f"\n| workers (1 thread each) | trials/hour, search | trials/hour, wall | search seconds for {args.trials} trials per worker |"
    )
    print("|---|---|---|---|")
    for w, rs in runs.items():
        print(
            f"| {w} | {_stats([r['trials_per_hour'] for r in rs])} | {_stats([r['trials_per_hour_wall'] for r in rs])} | {_stats([r['search_seconds'] for r in rs])} |"
        )
    print("\n| storage + tracking | ms per trial, storage and logging calls only |\n|---|---|")
    for name, values in cost.items():
        print(f"| {name} | {_stats(values)} |")
    print(
        json.dumps(
            {
                "throughput": runs,
                "overhead_ms_per_trial": cost,
                "args": {k: v for k, v in vars(args).items() if k not in ("work", "storage_with_password")},
            }
        )
    )


if __name__ == "__main__":
    main()
