"""Measure candidate pruners by replaying recorded learning curves: ``python -m tuning.pruner_replay STORAGE STUDY``.

The study must hold unpruned trials (run it with ``optuna.pruners.NopPruner``) whose intermediate values are the
per-epoch validation accuracies and whose user attribute ``seconds`` is the trial's training time. Each replay
draws trials at random (with replacement) from that pool, as a search would produce them, and feeds their curves
to a pruner in a fresh in-memory study until a time budget is spent; a pruned trial costs the epochs it ran. The
score of a pruner is the mean best final accuracy within the budget, the share of runs whose best is the pool's
best, and the trials it fits into the budget.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

Curve = tuple[list[float], float]  # per-epoch values, seconds per epoch


def candidates(epochs: int) -> dict[str, Callable[[], optuna.pruners.BasePruner]]:
    """The pruners compared: none, median, percentiles, successive halving and Hyperband."""
    return {
        "none": optuna.pruners.NopPruner,
        "median (4 startup)": lambda: optuna.pruners.MedianPruner(n_startup_trials=4),
        "percentile 25 (keep best quarter)": lambda: optuna.pruners.PercentilePruner(25.0, n_startup_trials=4),
        "percentile 75 (prune worst quarter)": lambda: optuna.pruners.PercentilePruner(75.0, n_startup_trials=4),
        "successive halving rf=2": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
        "successive halving rf=3": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
        "hyperband rf=3": lambda: optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=epochs, reduction_factor=3
        ),
    }


def replay(
    curves: Sequence[Curve], make_pruner: Callable[[], optuna.pruners.BasePruner], budget: float, order: Sequence[int]
) -> tuple[float, int]:
    """One search of the trials ``curves[order[0]], curves[order[1]], ...`` under ``budget`` seconds.

    Returns the best final value and the number of trials run.
    """
    study = optuna.create_study(
        direction="maximize", pruner=make_pruner(), sampler=optuna.samplers.RandomSampler(seed=0)
    )
    spent, best, n = 0.0, -np.inf, 0
    for index in order:
        values, seconds = curves[index]
        if spent + seconds * len(values) > budget and n:  # the search does not start what it cannot finish
            return best, n
        trial = study.ask()
        n += 1
        for epoch, value in enumerate(values, start=1):
            trial.report(value, epoch)
            spent += seconds
            # As tuning.search does: never prune after the last epoch.
            if epoch < len(values) and trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            study.tell(trial, values[-1])
            best = max(best, values[-1])
    raise ValueError("order is too short for the budget")


def main(argv: Sequence[str] | None = None) -> int:
    """Print one line per pruner: mean best accuracy, share of runs finding the pool's best, trials run."""
    parser = argparse.ArgumentParser(prog="python -m tuning.pruner_replay", description=__doc__.splitlines()[0])
    parser.add_argument("storage")
    parser.add_argument("study_name")
    parser.add_argument(
        "--budget_trials", type=float, default=12, help="budget in unpruned trials of mean length (default: 12)"
    )
    parser.add_argument("--replays", type=int, default=2000)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(logging.WARNING)
    study = optuna.load_study(study_name=args.study_name, storage=args.storage)
    curves = [
        (
            [t.intermediate_values[s] for s in sorted(t.intermediate_values)],
            t.user_attrs["seconds"] / len(t.intermediate_values),
        )
        for t in study.trials
        if t.state == TrialState.COMPLETE and t.intermediate_values and "seconds" in t.user_attrs
    ]
    epochs = max(len(c[0]) for c in curves)
    budget = args.budget_trials * float(np.mean([s * len(v) for v, s in curves]))
    top = max(v[-1] for v, _ in curves)
    print(
        f"{len(curves)} curves of {epochs} epochs; budget {budget:.0f}s = {args.budget_trials:g} mean trials; pool best {top:.4f}"
    )
    # The same random trial sequences for every pruner; a pruner that saves time gets further along each.
    orders = np.random.default_rng(0).integers(len(curves), size=(args.replays, int(10 * args.budget_trials) + 10))
    for name, make in candidates(epochs).items():
        runs = [replay(curves, make, budget, order) for order in orders]
        best = np.array([b for b, _ in runs])
        print(
            f"{name:38s} mean best {best.mean():.5f}  found pool best {np.mean(best >= top):5.1%}  trials {np.mean([n for _, n in runs]):5.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
