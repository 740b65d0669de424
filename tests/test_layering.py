"""The folder rules of README.md's Layout, read from every module's imports with ast (those inside functions too)."""

import pytest

from tests.conftest import ROOT
from tests.test_architecture import PACKAGES, _module_names, _sources

pytestmark = pytest.mark.unit


# The folder rules of README.md's Layout: the layer of every module, and the layers each may import. A layer is a
# folder of digits/ (one step of the workflow), the sibling package tuning/, or workflow/ (the orchestration above both).
# Imports run one way: workflow -> tuning -> mlops -> evaluate -> learn -> serve -> core; app, feedback and ops hang off
# the serving contract and the core.
LAYERS = {
    "core": {"core"},
    "serve": {"core"},
    "feedback": {"core", "serve"},
    "ops": {"core"},
    "learn": {"core", "serve"},
    "evaluate": {"core", "serve", "learn"},
    "mlops": {"core", "serve", "learn", "evaluate", "feedback"},
    "app": {"core", "serve", "feedback"},
    "tuning": {"core", "serve", "learn", "evaluate", "mlops"},
    "workflow": {"core", "serve", "learn", "evaluate", "mlops", "feedback", "app", "ops", "tuning"},
}


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] in ("tuning", "workflow"):
        return parts[0]
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "core"  # digits/__init__: the package itself


def _imports(path) -> list[tuple[int, str]]:
    """Every import of a module, those inside functions included: (line, absolute module name)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _layer_violations() -> list[str]:
    known = set(_module_names())
    bad = []
    for path in _sources():
        if path.name == "__main__.py":
            continue  # `python -m digits`: the program's entry, run and never imported, calls workflow.cli
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        layer = _layer(module)
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top in ("optuna", "optuna_dashboard") and layer not in ("tuning", "workflow"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name} (only tuning/ and workflow/ may)")
            if top not in PACKAGES or name not in known:
                continue  # third party, or `from x import function`
            target = _layer(name)
            if target != layer and target not in LAYERS[layer]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name} ({layer} may not import {target})")
    return bad


def test_imports_follow_the_folder_rules():
    assert _layer_violations() == []


def test_the_folder_rules_check_can_fail(tmp_path, monkeypatch):
    # A serving module that imports training code, inside a function, is caught.
    fake = ROOT / "digits" / "serve" / "_layering_probe.py"
    fake.write_text("def f():\n    from digits.learn import train\n    import optuna\n")
    try:
        bad = _layer_violations()
    finally:
        fake.unlink()
    assert any("_layering_probe.py:2 imports digits.learn.train (serve may not import learn)" in b for b in bad), bad
    assert any("_layering_probe.py:3 imports optuna" in b for b in bad), bad


def test_no_import_cycle_between_packages():
    # digits never imports tuning or workflow; tuning never imports workflow: the orchestration sits above both.
    bad = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in _sources()
        if p.name != "__main__.py"
        for _, n in _imports(p)
        if (p.parts[len(ROOT.parts)] == "digits" and n.split(".")[0] in ("tuning", "workflow"))
        or (p.parts[len(ROOT.parts)] == "tuning" and n.split(".")[0] == "workflow")
    ]
    assert bad == []
