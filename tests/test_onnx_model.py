"""The ONNX-backed served model (digits-cnn-onnx): the same answers and errors as the torch one, and no torch in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException

from digits.core.config import TrainConfig
from digits.mlops import export, registry
from digits.serve.model import build_model, save_checkpoint
from tests.conftest import ROOT, bundle_problems, import_closure, isolated_store, zero_size_png


@pytest.fixture(scope="module")
def logged(tmp_path_factory, mlflow_db_template):
    """A tiny CNN (batch norms with real statistics) logged twice into one run: as the torch and the ONNX pyfunc."""
    root = tmp_path_factory.mktemp("onnx-model")
    torch.manual_seed(0)
    config = TrainConfig(width=4, blocks=2)
    network = build_model(config).eval()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    network.set_temperature(0.5)  # as calibration leaves it: both served models must answer with it
    with isolated_store(root, "onnx-model-tests", mlflow_db_template) as (uri, experiment):
        with mlflow.start_run(experiment_id=experiment):
            torch_info = registry.log_cnn_model(save_checkpoint(network, config, root / "ckpt"))
            onnx_info = registry.log_onnx_model(export.export_onnx(network, config, root / "model.onnx"))
        yield {"uri": uri, "root": root, "torch": torch_info.model_uri, "onnx": onnx_info.model_uri}


def requests_to_compare() -> dict[str, pd.DataFrame]:
    import base64
    import io

    from PIL import Image, ImageDraw

    picture = Image.new("L", (120, 160), 255)
    ImageDraw.Draw(picture).line([(30, 30), (90, 30), (50, 140)], fill=0, width=10)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    rng = np.random.default_rng(0)
    arrays = np.zeros((5, 28, 28), np.uint8)
    arrays[:, 8:20, 10:18] = rng.integers(100, 256, (5, 12, 8))
    return {
        "example": registry.input_example(),
        "arrays": pd.DataFrame({"image": list(arrays)}),
        "picture": pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode()]}),
    }


def bad_requests() -> dict[str, pd.DataFrame]:
    import base64

    return {
        "wrong shape": pd.DataFrame({"image": [[1, 2, 3]]}),
        "NaN": pd.DataFrame({"image": [np.full((28, 28), np.nan)]}),
        "not base64": pd.DataFrame({"image": ["this is not base64!"]}),
        "0x0 image": pd.DataFrame({"image": [base64.b64encode(zero_size_png()).decode()]}),
        "no image column": pd.DataFrame({"picture": ["x"]}),
    }


@pytest.mark.unit
def test_the_onnx_bundle_imports_no_torch():
    allowed = {"numpy", "PIL", "pandas", "mlflow", "orjson", "scipy", "starlette", "onnxruntime"}
    assert "onnxruntime" in registry.ONNX_SERVING_REQUIREMENTS and "torch" not in registry.ONNX_SERVING_REQUIREMENTS
    onnx_code = import_closure("serve/onnx_model.py")  # what the ONNX model's entry point runs, of the bundle
    assert set(onnx_code) <= set(registry.serving_files()) and "serve/answers.py" in onnx_code
    assert bundle_problems(onnx_code, allowed) == []
    # And the check can fail: the torch model's own module, bundled alone, imports torch.
    assert "serve/serving.py imports torch" in bundle_problems(("serve/serving.py",), allowed)


@pytest.mark.unit
def test_the_onnx_model_answers_what_the_torch_model_answers_and_refuses_what_it_refuses(logged):
    torch_model, onnx_model = mlflow.pyfunc.load_model(logged["torch"]), mlflow.pyfunc.load_model(logged["onnx"])
    for name, request in requests_to_compare().items():
        want, got = torch_model.predict(request), onnx_model.predict(request)
        assert list(got.columns) == ["digit", "confidence", "probabilities"], name
        assert got["digit"].tolist() == want["digit"].tolist(), name
        np.testing.assert_allclose(
            np.stack(got["probabilities"]), np.stack(want["probabilities"]), atol=export.PARITY_ATOL
        )
    for name, request in bad_requests().items():
        messages = []
        for model in (torch_model, onnx_model):
            with pytest.raises(MlflowException) as info:
                model.predict(request)
            assert info.value.get_http_status_code() == 400, name
            messages.append(info.value.message.rsplit("Error: ", 1)[-1])
        assert messages[0] == messages[1], name


@pytest.mark.unit
def test_both_served_models_apply_the_stored_temperature_and_min_confidence(logged):
    from digits.evaluate.calibration import apply_temperature
    from digits.serve.model import CALIBRATION_FILE, load_checkpoint, predict_proba

    network, _ = load_checkpoint(logged["root"] / "ckpt")
    assert json.loads((logged["root"] / "ckpt" / CALIBRATION_FILE).read_text())["temperature"] == 0.5
    request = requests_to_compare()["arrays"]
    images = np.stack(request["image"]).astype(np.uint8)
    calibrated = predict_proba(network, images)
    network.set_temperature(1.0)
    np.testing.assert_allclose(calibrated, apply_temperature(predict_proba(network, images), 0.5), atol=1e-5)
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(logged["root"] / "model.onnx")).metadata_props}
    assert metadata["temperature"] == "0.5"  # in the graph, recorded for a reader of the file
    threshold = float(np.median(calibrated.max(axis=1)))
    for uri in (logged["torch"], logged["onnx"]):
        model = mlflow.pyfunc.load_model(uri)
        np.testing.assert_allclose(np.stack(model.predict(request)["probabilities"]), calibrated, atol=1e-4)
        answer = model.predict(request, params={"min_confidence": threshold})
        unsure = calibrated.max(axis=1) < threshold
        assert answer["unsure"].tolist() == unsure.tolist() and unsure.any() and not unsure.all()
        assert answer["digit"].tolist() == np.where(unsure, -1, calibrated.argmax(1)).tolist()
        with pytest.raises(MlflowException, match="must be a number from 0 to 1") as info:
            model.predict(request, params={"min_confidence": 2.0})
        assert info.value.get_http_status_code() == 400


@pytest.mark.data
def test_the_onnx_model_runs_where_torch_is_not_installed(logged, tmp_path):
    # A serving image for the ONNX model: its requirements, its bundled code, and no torch (an import of it fails).
    script = f"""
import sys
sys.modules["torch"] = None
sys.meta_path = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", type(f).__module__)]
sys.path = [p for p in sys.path if p not in ("", {str(ROOT)!r})]
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model({logged["onnx"]!r})
import digits.serve.onnx_model
assert "/code/digits/" in digits.serve.onnx_model.__file__.replace("\\\\", "/"), digits.serve.onnx_model.__file__
example = pd.read_json({str(tmp_path / "example.json")!r}, orient="split")
print(model.predict(example)["digit"].tolist())
"""
    registry.input_example().to_json(tmp_path / "example.json", orient="split")
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged["uri"], "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = mlflow.pyfunc.load_model(logged["torch"]).predict(registry.input_example())["digit"].tolist()
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
    downloaded = Path(mlflow.artifacts.download_artifacts(logged["onnx"], dst_path=str(tmp_path / "model")))
    requirements = (downloaded / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in requirements} == set(registry.ONNX_SERVING_REQUIREMENTS)


def ink_arrays(n: int, seed: int = 1) -> np.ndarray:
    """``n`` MNIST-like arrays (light ink on dark) that pass the served model's checks."""
    out = np.zeros((n, 28, 28), np.uint8)
    out[:, 8:20, 10:18] = np.random.default_rng(seed).integers(100, 256, (n, 12, 8))
    return out


@pytest.mark.unit
def test_ten_thousand_rows_score_in_one_in_process_predict_torch_and_onnx_alike(logged):
    # The per-request limit (MAX_BATCH) is the HTTP edge's; in-process the model works through any number of rows.
    frame = pd.DataFrame({"image": list(ink_arrays(10_000))})
    torch_model, onnx_model = mlflow.pyfunc.load_model(logged["torch"]), mlflow.pyfunc.load_model(logged["onnx"])
    want, got = torch_model.predict(frame), onnx_model.predict(frame)
    assert len(want) == len(got) == 10_000 and got.index.tolist() == list(range(10_000))
    np.testing.assert_allclose(np.stack(got["probabilities"]), np.stack(want["probabilities"]), atol=export.PARITY_ATOL)
    last = torch_model.predict(frame.iloc[-1_000:].reset_index(drop=True))  # the same rows in one request's worth
    np.testing.assert_allclose(np.stack(want["probabilities"][-1_000:]), np.stack(last["probabilities"]), atol=1e-6)
    frame.at[1_123, "image"] = np.zeros((27, 28), np.uint8)  # a bad row past the first chunk: named by its place
    with pytest.raises(MlflowException, match=r"image 1123: .*got shape \(27, 28\)"):
        onnx_model.predict(frame)


@pytest.mark.unit
def test_answer_works_through_rows_one_request_at_a_time():
    from digits.serve.answers import answer
    from digits.serve.contract import MAX_BATCH

    calls = []

    def proba(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return np.full((len(images), 10), 0.1)

    out = answer(pd.DataFrame({"image": list(ink_arrays(2 * MAX_BATCH + 500))}), proba)
    assert calls == [MAX_BATCH, MAX_BATCH, 500] and len(out) == 2 * MAX_BATCH + 500


@pytest.mark.data
def test_mlflow_models_predict_scores_a_file_over_the_per_request_limit(logged, tmp_path):
    from digits.serve.contract import MAX_BATCH, request_body

    rows = ink_arrays(MAX_BATCH + 1_500, seed=2)
    (tmp_path / "in.json").write_text(json.dumps(request_body(rows)))
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged["uri"]}
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "models",
        "predict",
        "-m",
        logged["onnx"],
        "-i",
        str(tmp_path / "in.json"),
    ]
    command += ["-t", "json", "-o", str(tmp_path / "out.json"), "--env-manager", "local"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads((tmp_path / "out.json").read_text())["predictions"]
    expected = mlflow.pyfunc.load_model(logged["onnx"]).predict(pd.DataFrame({"image": list(rows)}))
    assert [p["digit"] for p in predictions] == expected["digit"].tolist() and len(predictions) == len(rows)
