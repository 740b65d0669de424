"""digits/guard.py in-process: the scoring server's functions as the guard wraps them, against a tiny logged model.

The same requests against the real `mlflow models serve` (the route, the body as it arrives, memory) are in
tests/test_serving_limits.py.
"""

from __future__ import annotations

import json
import types

import mlflow
import numpy as np
import pytest

from digits.core.config import TrainConfig
from digits.mlops import registry
from digits.serve import guard, seams
from digits.serve.model import build_model, save_checkpoint
from tests.conftest import isolated_store

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A logged (untrained, tiny) CNN, loaded as the scoring server loads it, and its input schema."""
    root = tmp_path_factory.mktemp("guard")
    with isolated_store(root, "guard-tests") as (_, experiment):
        config = TrainConfig(width=4, blocks=2)
        checkpoint = save_checkpoint(build_model(config), config, root / "ckpt")
        with mlflow.start_run(experiment_id=experiment):
            info = registry.log_cnn_model(checkpoint)
        model = mlflow.pyfunc.load_model(info.model_uri)
        yield model, model.metadata.get_input_schema()


@pytest.fixture
def server(monkeypatch):
    """MLflow's scoring-server module with the guard installed; restored afterwards."""
    from mlflow.pyfunc import scoring_server

    for name in ("invocations", "predictions_to_json", "_async_catch_mlflow_exception"):
        monkeypatch.setattr(scoring_server, name, getattr(scoring_server, name))
    original = scoring_server.invocations
    guard.install()
    guard.install()  # idempotent: wraps once
    assert scoring_server.invocations._digits_guard and scoring_server.invocations.__wrapped__ is original
    return scoring_server


def images(n: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    out = np.zeros((n, 28, 28), np.uint8)
    out[:, 8:20, 10:18] = rng.integers(100, 256, (n, 12, 8))  # light ink on dark, as the endpoint expects
    return out


def refused(result, status: int) -> str:
    assert (result.status, result.mimetype) == (status, "application/json"), result.response[:300]
    body = json.loads(result.response)
    assert set(body) == {"error_code", "message"} and len(result.response) <= guard.MAX_ERROR_CHARS + 100
    return body["message"]


def test_content_types_other_than_json_are_a_json_415_that_lists_what_works(server, served):
    model, schema = served
    for content_type in (
        None,
        "",
        "text/plain",
        "text/csv",
        "application/vnd.apache.parquet",
        "application/x-www-form-urlencoded",
    ):
        message = refused(server.invocations("image\nabc\n", content_type, model, schema), 415)
        assert "content types this model takes: application/json" in message, content_type
    # Media types are case-insensitive (RFC 9110): this is JSON.
    ok = server.invocations(
        json.dumps({"inputs": images(2).tolist()}), "APPLICATION/JSON; charset=UTF-8", model, schema
    )
    assert ok.status == 200 and len(json.loads(ok.response)["predictions"]) == 2


def test_bodies_that_are_not_requests_are_refused_before_any_array_is_built(server, served):
    model, schema = served
    too_big = server.invocations(b" " * (guard.MAX_REQUEST_BYTES + 1), "application/json", model, schema)
    assert f"over the limit of {guard.MAX_REQUEST_BYTES:,}" in refused(too_big, 413)
    # Not JSON: the answer does not repeat the body (MLflow's own message quotes it, escaped twice).
    junk = server.invocations(b"\xff" * 5_000_000, "application/json", model, schema)
    assert "not valid JSON" in refused(junk, 400)
    assert "nested too deeply" in refused(
        server.invocations("[" * 100_000 + "]" * 100_000, "application/json", model, schema), 400
    )
    assert "JSON dictionary" in refused(server.invocations("[1, 2, 3]", "application/json", model, schema), 400)
    for params in ('"junk"', "[1]", '{"temperature": 0.5}'):
        body = '{"inputs": [[0]], "params": ' + params + "}"
        assert "this model takes no params" in refused(server.invocations(body, "application/json", model, schema), 400)
    # 20,000 rows are counted in the parsed JSON, not built into 20,000 arrays first.
    rows = {"dataframe_split": {"columns": ["image"], "data": [[[0]]] * 20_000}}
    assert "batch of 20,000 images is over the limit of 1,000" in refused(
        server.invocations(json.dumps(rows), "application/json", model, schema), 400
    )
    for layout in (
        {"inputs": [[0]] * 1001},
        {"instances": [[0]] * 1001},
        {"dataframe_records": [{"image": "x"}] * 1001},
        {"inputs": {"image": ["x"] * 1001}},
    ):
        assert "over the limit of 1,000" in refused(
            server.invocations(json.dumps(layout), "application/json", model, schema), 400
        )


def test_mlflows_errors_reach_the_client_short_and_without_the_request_or_a_stack_trace(server, served):
    model, schema = served
    # A request without the image column: MLflow's schema error, which it prefixes with the whole input.
    body = json.dumps({"dataframe_records": [{"picture": "x" * 5000}] * 500})
    with pytest.raises(mlflow.exceptions.MlflowException) as info:
        server.invocations(body, "application/json", model, schema)
    error = info.value
    assert error.get_http_status_code() == 400 and "missing inputs ['image']" in error.message
    assert len(error.message) <= guard.MAX_ERROR_CHARS and "xxxxxxxxxx" not in error.message
    assert "stack_trace" not in json.loads(error.serialize_as_json())


def test_good_requests_get_mlflows_own_answer_only_faster(server, served, monkeypatch):
    model, schema = served
    original = server.invocations.__wrapped__
    batch = images()
    bodies = [
        json.dumps({"inputs": batch.tolist()}),  # (N, 28, 28)
        json.dumps({"inputs": batch.reshape(5, 784).tolist()}).encode(),  # (N, 784), as bytes like the server gets
        json.dumps({"inputs": batch[:1].tolist(), "params": {}}),
        json.dumps({"dataframe_split": {"columns": ["image"], "data": [[i] for i in batch.tolist()]}}),
        json.dumps({"dataframe_split": registry.input_example().to_dict(orient="split")}),
    ]
    for body in bodies:
        fast = server.invocations(body, "application/json; charset=utf-8", model, schema)
        with monkeypatch.context() as m:  # MLflow's own path: its parser, its deep copy, its json.dump
            m.setattr(server, "predictions_to_json", server.predictions_to_json.__wrapped__)
            slow = original(body, "application/json; charset=utf-8", model, schema)
        assert (fast.status, fast.mimetype) == (slow.status, slow.mimetype) == (200, "application/json")
        assert fast.response == slow.response  # the same text, to the digit


def test_parse_request_keeps_what_mlflow_should_judge():
    assert guard.parse_request('{"inputs": [1, 2], "other": 3}') == {
        "inputs": [1, 2],
        "other": 3,
    }  # unknown keys: MLflow decides
    assert guard.parse_request('{"inputs": [{"image": "x"}]}') == {"inputs": [{"image": "x"}]}  # records stay records
    assert guard.parse_request('{"inputs": [[1], [2]]}') == {
        "dataframe_split": {"columns": ["image"], "data": [[[1]], [[2]]]}
    }
    nan = guard.parse_request(
        '{"inputs": [[NaN, 1]]}'
    )  # orjson refuses NaN; Python's json reads it, predict refuses it
    assert np.isnan(nan["dataframe_split"]["data"][0][0][0])


@pytest.mark.parametrize(
    "headers, status, message",
    [
        ({}, 415, "no Content-Type header"),
        ({"content-type": "text/csv"}, 415, "content types this model takes"),
        (
            {"content-type": "application/json", "content-encoding": "gzip"},
            415,
            "Content-Encoding 'gzip' is not supported",
        ),
        (
            {"content-type": "application/json", "content-length": str(2**30)},
            413,
            "1,073,741,824 bytes, over the limit",
        ),
    ],
)
def test_headers_alone_refuse_a_request_before_its_body_is_read(headers, status, message):
    with pytest.raises(guard._Refused) as info:
        guard.check_headers(headers)
    assert info.value.status == status and message in str(info.value)
    guard.check_headers(
        {"content-type": "Application/JSON", "content-length": "100", "content-encoding": "identity"}
    )  # fine


# --- found by shape, not by version --------------------------------------------------------------------------------


def test_every_protection_is_on_for_the_installed_mlflow(server):
    assert seams.protections() == dict.fromkeys(seams.protections())  # all None: on
    assert seams.off_line(seams.protections(), mlflow.__version__) is None


def _changed_server(**changes):
    """A copy of MLflow's scoring-server module's namespace with some attributes changed (None: removed)."""
    from mlflow.pyfunc import scoring_server

    namespace = {k: v for k, v in vars(scoring_server).items() if not k.startswith("__")}
    namespace.update(changes)
    return types.SimpleNamespace(**{k: v for k, v in namespace.items() if v is not None})


def test_a_changed_seam_switches_off_only_what_needs_it_and_says_so_in_one_warning(monkeypatch, caplog):
    def invocations(data, content_type, model, input_schema, params):  # a new MLflow that takes one more argument
        raise AssertionError("not called")

    changed = _changed_server(invocations=invocations, predictions_to_json=None)
    monkeypatch.setattr(seams, "scoring_server", lambda: changed)
    with caplog.at_level("WARNING", logger="digits.serve.guard"):
        status = guard.install()
    off = {name for name, reason in status.items() if reason}
    assert off == set(seams.PROTECTIONS[seams.INVOCATIONS] + seams.PROTECTIONS[seams.ANSWERS])
    assert changed.invocations is invocations and changed._async_catch_mlflow_exception._digits_guard
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    message = warnings[0].getMessage()
    assert f"partly off on MLflow {mlflow.__version__}" in message
    assert "batch limit checked before any array is built (400) (invocations(" in message
    assert "fast JSON answers (speed only) (predictions_to_json is gone)" in message


def test_a_route_decorator_the_server_no_longer_uses_is_not_trusted(monkeypatch):
    from mlflow.pyfunc import scoring_server

    def init(model):  # an app built without MLflow's route decorator: wrapping it would protect nothing
        return scoring_server.invocations(model)

    changed = _changed_server(init=init)
    status = seams.protections(changed)
    assert status["body limit while reading (413)"] == "init() no longer uses _async_catch_mlflow_exception"
    assert status["JSON, params and batch limit checked before any array is built (400)"] is None
    assert seams.protections(_changed_server(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT=None))["stalled uploads (408)"]

    def init_with_another_handler(model):  # the route's path alone is not a use of invocations()
        return "/invocations", model

    status = seams.protections(_changed_server(init=init_with_another_handler))
    assert status["JSON, params and batch limit checked before any array is built (400)"] == (
        "init() no longer uses invocations"
    )
