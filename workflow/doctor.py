"""``digits doctor``: what this environment runs with, and one line per problem that would stop the workflow.

Prints the versions of MLflow, Optuna, PyTorch and ONNX Runtime, the tracking and registry URIs, whether the data
folder holds valid MNIST files, whether each protection of the serving guard is on for the installed MLflow, and
whether a champion is registered. Exit status 0 when nothing is wrong, else 1, with one ``problem:`` line each on
stderr. Reads only: downloads nothing, creates no experiment.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from digits.core.names import CHAMPION, CNN_MODEL_NAME

PACKAGES = {"MLflow": "mlflow", "Optuna": "optuna", "PyTorch": "torch", "ONNX Runtime": "onnxruntime"}


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was looked at, what was seen, and the problem (``None``: fine)."""

    name: str
    seen: str
    problem: str | None = None


def versions() -> list[Finding]:
    """The installed versions of the packages the workflow needs."""
    out = []
    for name, package in PACKAGES.items():
        try:
            out.append(Finding(name, importlib.metadata.version(package)))
        except importlib.metadata.PackageNotFoundError:
            out.append(Finding(name, "not installed", f"{name} is not installed: pip install -e . (or make setup)"))
    return out


def stores() -> list[Finding]:
    """The tracking and registry URIs MLflow resolves here (MLFLOW_TRACKING_URI, MLFLOW_REGISTRY_URI, defaults)."""
    import mlflow

    return [Finding("tracking URI", mlflow.get_tracking_uri()), Finding("registry URI", mlflow.get_registry_uri())]


def data_folder(data_dir: str) -> Finding:
    """Whether ``data_dir`` (else $DIGITS_DATA_DIR, else the cache) holds the four MNIST IDX files, read and checked."""
    from digits.learn.data import DataError, default_data_dir, read_mnist_dir

    directory = data_dir or str(default_data_dir())
    try:
        mnist = read_mnist_dir(directory)
    except DataError as exc:
        return Finding("data folder", directory, f"data folder: {exc}")
    return Finding("data folder", f"{directory} ({len(mnist.train_labels):,} train, {len(mnist.test_labels):,} test)")


def guard() -> list[Finding]:
    """Each protection of the serving guard (digits.serve.seams), on or off for the installed MLflow."""
    import mlflow

    from digits.serve import seams

    status = seams.protections()
    off = {name: reason for name, reason in status.items() if reason}
    seen = f"{len(status) - len(off)} of {len(status)} protections on for MLflow {mlflow.__version__}"
    return [Finding("serving guard", seen)] + [
        Finding("serving guard", f"off: {name}", f"serving guard: {name} is off on MLflow {mlflow.__version__} ({why})")
        for name, why in off.items()
    ]


def champion() -> Finding:
    """Whether ``digits-cnn@champion`` is registered in the registry MLflow sees."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from digits.core.errors import first_line

    uri = f"models:/{CNN_MODEL_NAME}@{CHAMPION}"
    # An unreachable tracking server is a problem to report, not minutes of retries to sit through.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        version = MlflowClient().get_model_version_by_alias(CNN_MODEL_NAME, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return Finding("champion", "none", f"no champion registered ({uri}): run `make run` or `mlflow run .`")
        return Finding("champion", "unknown", f"cannot read the registry: {first_line(exc)}")
    return Finding("champion", f"{uri} is version {version.version} (run {version.run_id})")


def diagnose(data_dir: str = "", checks: dict[str, Callable[[], list[Finding]]] | None = None) -> list[Finding]:
    """Every finding, in the order printed."""
    checks = checks or {
        "versions": versions,
        "stores": stores,
        "data": lambda: [data_folder(data_dir)],
        "guard": guard,
        "champion": lambda: [champion()],
    }
    return [finding for check in checks.values() for finding in check()]


def report(findings: list[Finding]) -> int:
    """Print the findings (stdout) and one line per problem (stderr); the exit status: 1 if any problem."""
    width = max((len(f.name) for f in findings), default=0)
    for finding in findings:
        print(f"{finding.name:<{width}}  {finding.seen}")
    problems = [f.problem for f in findings if f.problem]
    for problem in problems:
        print(f"digits doctor: problem: {problem}", file=sys.stderr)
    return 1 if problems else 0
