"""The dependency rules stated at the end of README.md's Layout section, checked in fresh interpreters."""

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.data  # each test starts a fresh interpreter (seconds)

# A None entry in sys.modules makes `import x` fail and find_spec("x") answer None: as if x were not installed.
BLOCK = "import sys\nfor name in BLOCKED:\n    sys.modules[name] = None\n"


def _python(code: str, blocked: set[str] = frozenset()) -> subprocess.CompletedProcess:
    script = f"BLOCKED = {set(blocked)!r}\n" + BLOCK + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_training_loop_runs_with_torch_and_numpy_alone():
    result = _python(
        """
        import numpy as np
        from digits.core.config import TrainConfig
        from digits.learn.train import fit
        from digits.serve.model import save_checkpoint
        r = fit(TrainConfig(epochs=1, batch_size=16, width=4, device="cpu"), (np.zeros((32, 28, 28), np.uint8), np.zeros(32, np.uint8)))
        print("ok", len(r.history))
        """,
        blocked={"mlflow", "optuna", "sklearn", "pandas", "matplotlib", "tuning"},
    )
    assert result.returncode == 0, result.stderr
    assert "ok 1" in result.stdout


def test_library_modules_never_import_optuna_or_tuning():
    # digits.app imports gradio (an optional extra); digits.__main__ runs the CLI
    modules = [
        m for m in _module_names() if m.startswith("digits.") and not m.startswith(("digits.app", "digits.__main__"))
    ]
    result = _python(
        f"""
        import importlib, sys
        for m in {modules!r}:
            importlib.import_module(m)
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("optuna", "tuning"))
        print("imported:", bad)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "imported: []" in result.stdout


def test_importing_does_no_work(tmp_path):
    # No mkdirs, no tracking-URI setting, no logging configuration at import time.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
            import logging, os, pkgutil, importlib, mlflow, digits, tuning
            import workflow
            for package in (digits, tuning, workflow):
                for m in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                    if not m.name.endswith("__main__"):
                        importlib.import_module(m.name)
            assert not logging.getLogger().handlers, logging.getLogger().handlers
            assert "MLFLOW_TRACKING_URI" not in os.environ
            print(sorted(os.listdir(".")))
            """
            ),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={k: v for k, v in __import__("os").environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


MAX_FUNCTION_LINES = 60  # issue 16: one job per function; decorators and docstrings count
MAX_MODULE_LINES = 400  # and one job per module


PACKAGES = ("digits", "tuning", "workflow")


def _sources() -> list:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _module_names() -> list[str]:
    return [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in _sources()]


def test_no_module_is_over_four_hundred_lines():
    long = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in _sources()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, "split these: " + ", ".join(long)


def test_no_function_in_the_package_is_over_sixty_lines():
    import ast

    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([d.lineno for d in node.decorator_list] + [node.lineno])
                if node.end_lineno - first + 1 > MAX_FUNCTION_LINES:
                    long.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - first + 1} lines)"
                    )
    assert not long, "split these: " + ", ".join(long)
