"""Shared fixtures and test-data helpers (import the helpers as ``from tests.conftest import ...``).

Tiers (markers registered in pyproject.toml): every test carries exactly one of ``unit``, ``data`` and ``e2e``;
collection fails otherwise (see ``tier_problems``).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TIERS = ("unit", "data", "e2e")


# --- tiers -------------------------------------------------------------------------------------------------------


# The robustness evaluation of every evaluated model corrupts robust_size=2,000 test digits by default (~40 s of
# picture corruptions per process): the tests' pipelines take 300, passed as the flag or MLproject parameter.
TEST_ROBUST_SIZE = 300


def pytest_configure(config):
    # In-process evaluations that are given no robust_size (log_test_evaluation, evaluate_model) take this default.
    from digits.evaluate import robustness

    robustness.DEFAULT_SIZE = TEST_ROBUST_SIZE


def tier_problems(items) -> list[str]:
    """One line per collected test that carries no tier marker or more than one (``-m data`` must not pick e2e)."""
    problems = []
    for item in items:
        tiers = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
        if len(tiers) != 1:
            problems.append(f"{item.nodeid}: {'no tier marker' if not tiers else 'tiers ' + ' and '.join(tiers)}")
    return problems


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything: every collected test is checked
def pytest_collection_modifyitems(config, items):
    problems = tier_problems(items)
    if problems:
        raise pytest.UsageError(
            f"each test needs exactly one tier marker of {', '.join(TIERS)}:\n" + "\n".join(problems)
        )


# --- stores and data ---------------------------------------------------------------------------------------------


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
    from digits.learn.data import load_mnist

    return load_mnist(mnist_dir)


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory) -> Path:
    """An initialised, empty MLflow sqlite store: creating its tables takes about a second, copying it does not."""
    import mlflow

    directory = tmp_path_factory.mktemp("mlflow-db-template")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(directory)  # the Default experiment's artifact location is resolved now: keep it out of the checkout
        mlflow.MlflowClient(tracking_uri=f"sqlite:///{directory / 'mlflow.db'}").search_experiments()
    return directory / "mlflow.db"


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch, mlflow_db_template) -> str:
    """A fresh sqlite MLflow store for one test, set for this process and the subprocesses it starts."""
    import mlflow
    import mlflow.tracking.fluent

    shutil.copy(mlflow_db_template, tmp_path / "mlflow.db")
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
def isolated_store(root: Path, experiment: str, template: Path | None = None):
    """A sqlite store under ``root`` for a module's fixtures: (uri, experiment id), artifacts under ``root``.

    ``template``: an initialised store to start from (``mlflow_db_template``), which saves creating the tables.
    """
    import mlflow

    if template is not None:
        shutil.copy(template, root / "mlflow.db")
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


def fake_digits(n: int, rng: np.random.Generator, background: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` MNIST-shaped images and labels 0, 1, ..., 9, 0, ...: each digit a bright bar at its own row, on noise.

    ``background``: the share of noise pixels set to 0, for data that is mostly background as MNIST is.
    """
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
    if background:
        images[rng.random(images.shape) < background] = 0
    for i, c in enumerate(labels):
        images[i, 4 + 2 * c : 6 + 2 * c, 4:24] = 255
    return images, labels


def fake_mnist(n_train: int = 300, n_test: int = 200, digest: str = "fakedigest000001", seed: int = 0):
    """A small, learnable fake MNIST in memory (``fake_digits``), as ``digits.learn.data.MNIST``."""
    from digits.learn.data import MNIST

    rng = np.random.default_rng(seed)
    train_images, train_labels = fake_digits(n_train, rng)
    test_images, test_labels = fake_digits(n_test, rng)
    return MNIST(train_images, train_labels, test_images, test_labels, source="/fake", digest=digest)


@pytest.fixture
def fake_mnist_dir(tmp_path) -> Path:
    """The four IDX files of ``fake_mnist(1200, 200)`` (gzipped), in a folder of their own."""
    data = fake_mnist(n_train=1200, n_test=200)
    directory = tmp_path / "fake-mnist"
    directory.mkdir()
    for part, images, labels in (
        ("train", data.train_images, data.train_labels),
        ("t10k", data.test_images, data.test_labels),
    ):
        write_idx(directory / f"{part}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{part}-labels-idx1-ubyte.gz", labels)
    return directory


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` and whose image data is empty: what a size check sees."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def zero_size_png() -> bytes:
    """A well-formed PNG of 0x0 pixels (Pillow refuses to open it)."""
    return png_header(0, 0)


def free_port() -> int:
    """A local TCP port that nothing listens on once this returns."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def scoring_server(model_uri: str, log_path: Path, **env: str):
    """The real ``mlflow models serve`` of ``model_uri`` on a free port (``env``: its variables); yields (url, process).

    Started in its own session and stopped by its process group afterwards: nothing is left running.
    """
    from benchmarks.serving import start_server, stop_server

    try:
        process, url = start_server(model_uri, log_path, env, timeout=180)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield url, process
    finally:
        stop_server(process)


def bundle_problems(modules, allowed_third_party: set[str], package: Path = ROOT / "digits") -> list[str]:
    """The imports of ``modules`` (files of ``package`` bundled with a served model) that its environment lacks.

    A ``digits`` module not among ``modules`` is missing from the bundle; any other top-level module must be in
    the standard library or ``allowed_third_party`` (the model's pip requirements).
    """
    import ast

    bundled = {("digits." + m.removesuffix(".py").replace("/", ".")).removesuffix(".__init__") for m in modules}
    problems = []
    for module in modules:
        for node in ast.walk(ast.parse((package / module).read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                else []
            )
            for name in names:
                top = name.split(".")[0]
                ok = (
                    name in bundled
                    if top == "digits"
                    else top in sys.stdlib_module_names or top in allowed_third_party or top == "__future__"
                )
                if not ok:
                    problems.append(f"{module} imports {name}")
    return problems


def import_closure(start: str, package: Path = ROOT / "digits") -> list[str]:
    """The files of ``package`` that ``start`` (a path relative to it) imports, directly or not, itself included."""
    import ast

    seen, todo = [], [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.append(module)
        for node in ast.walk(ast.parse((package / module).read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module
                else []
            )
            if isinstance(node, ast.ImportFrom) and node.module:  # `from digits.serve import model`: a module too
                names += [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] != "digits":
                    continue
                path = Path(*parts[1:])
                for candidate in (path.with_suffix(".py"), path / "__init__.py"):
                    if (package / candidate).is_file():
                        todo.append(candidate.as_posix())
    return seen


def digits_command(*args: str) -> list[str]:
    """``python -m digits ARGS`` with this interpreter."""
    return [sys.executable, "-m", "digits", *args]


# The line reader at a size that trains in seconds: `main` trains the reader too, and its default (5 epochs of
# 10,000 strips) takes minutes on two cores. Tests of other steps pass these.
TINY_READER = {
    "reader_epochs": 1,
    "reader_strips": 64,
    "reader_val_strips": 20,
    "reader_render": 0.0,
    "reader_workers": 0,
}


def tiny_reader_flags() -> list[str]:
    """``TINY_READER`` as command-line flags."""
    return [item for name, value in TINY_READER.items() for item in (f"--{name}", str(value))]


def evaluate_numbers_run(tracking_uri: str, model_uri: str, experiment: str, mnist_dir, size: int):
    """``digits evaluate --number`` of ``model_uri`` as a user runs it (a fresh process, its own experiment); the
    finished run ``evaluate-numbers``."""
    import mlflow

    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_EXPERIMENT_NAME": experiment, "MPLBACKEND": "Agg"}
    args = ("evaluate", "--number", "--number_size", str(size), "--model_uri", model_uri, "--data_dir", str(mnist_dir))
    done = subprocess.run(digits_command(*args), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id], "tags.pipeline_step = 'evaluate'"
    )
    return run
