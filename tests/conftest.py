"""Shared fixtures. Markers (registered in pyproject.toml): unit, data, e2e."""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST IDX files: $DIGITS_DATA_DIR (CI sets it to ../shared/data/mnist)."""
    path = os.environ.get("DIGITS_DATA_DIR")
    if not path or not Path(path).is_dir():
        pytest.fail("data tests need DIGITS_DATA_DIR pointing at the four MNIST IDX files (e.g. ../shared/data/mnist)")
    return Path(path).resolve()


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    """MNIST loaded once per test session."""
    from digits.data import load_mnist

    return load_mnist(mnist_dir)


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """A fresh sqlite MLflow store for one test, set for this process and the subprocesses it starts."""
    import mlflow

    import mlflow.tracking.fluent

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    mlflow.set_tracking_uri(uri)
    # The project's experiment, created here so its artifacts land in tmp_path, not in ./mlruns of the checkout.
    mlflow.MlflowClient(uri).create_experiment("digits", artifact_location=(tmp_path / "artifacts").as_uri())
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)  # set_experiment outlives a test
    yield uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@contextlib.contextmanager
def isolated_store(root: Path, experiment: str):
    """A sqlite store under ``root`` for a module's fixtures: (uri, experiment id), artifacts under ``root``."""
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        experiment_id = mlflow.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())
        yield uri, experiment_id
        mlflow.set_tracking_uri(None)


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzipped when ``compress``."""
    header = struct.pack(">I", 0x800 | array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


@pytest.fixture
def fake_mnist_dir(tmp_path) -> Path:
    """A small, valid, learnable fake MNIST (each digit a bright bar at its own row) in IDX files."""
    rng = np.random.default_rng(0)

    def make(n):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            images[i, 4 + 2 * c : 6 + 2 * c, 4:24] = 255
        return images, labels

    directory = tmp_path / "fake-mnist"
    directory.mkdir()
    for part, n in (("train", 1200), ("t10k", 200)):
        images, labels = make(n)
        write_idx(directory / f"{part}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{part}-labels-idx1-ubyte.gz", labels)
    return directory


def digits_command(*args: str) -> list[str]:
    """``python -m digits ARGS`` with this interpreter."""
    return [sys.executable, "-m", "digits", *args]
