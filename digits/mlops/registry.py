"""The Model Registry: log the serving pyfunc, register versions, move aliases by the promotion rule, roll back.

Promotion rule (``promotion.decide``): a new version takes the alias ``champion`` only when its test accuracy is
strictly higher than the current champion's and its number exact match (when it carries the line reader) is not
lower (the first version always does); otherwise it takes ``challenger``, and the version, its source run and the
return value say why. ``set_alias`` promotes or rolls back by hand.

Knows nothing of training: it gets a checkpoint directory and numbers.
"""

from __future__ import annotations

import importlib.metadata
import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

from digits.core.errors import DigitsError, first_line
from digits.core.names import BASELINE_MODEL_NAME, CHALLENGER, CHAMPION, CNN_MODEL_NAME  # noqa: F401 (re-exported)
from digits.mlops.promotion import TAG_ACCURACY, TAG_NUMBERS, decide
from digits.serve.contract import LENGTH_PARAM, MIN_CONFIDENCE_PARAM, MODE_PARAM, PATTERN_PARAM
from digits.serve.model import CONFIG_FILE, WEIGHTS_FILE

# Version tags (and the run tag PROMOTION_TAG) that say where a version came from and why it got its alias.
TAG_RUN = "source_run_id"
TAG_DIGEST = "data_digest"
TAG_COMMIT = "git_commit"
PROMOTION_TAG = "promotion"

# The part of the package the served model runs: the folders serve/ and core/ (and the package's __init__), copied
# into the model as code (code_paths), so a fresh environment needs only the pip requirements below. The folder is
# the list: a module added to serve/ is bundled. tests/test_registry.py checks the bundle's imports.
SERVING_PACKAGES = ("core", "serve")
SERVING_REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pillow", "scipy", "orjson")
# The ONNX-backed model (digits-cnn-onnx): the same bundle and input handling, ONNX Runtime instead of torch; its
# entry point (digits.serve.onnx_model) imports no torch, which tests/test_onnx_model.py checks.
ONNX_SERVING_REQUIREMENTS = ("mlflow", "onnxruntime", "numpy", "pandas", "pillow", "scipy", "orjson")


def serving_files() -> list[str]:
    """The bundled files, relative to the ``digits`` package: its ``__init__.py`` and every module of the serving folders."""
    package = Path(__file__).resolve().parent.parent
    files = ["__init__.py"]
    for folder in SERVING_PACKAGES:
        files += sorted(str(p.relative_to(package)) for p in (package / folder).glob("*.py"))
    return files


# models-from-code: MLflow runs this file to get the model object, instead of unpickling one.
_ENTRY_POINT = '''"""The pyfunc entry point of the digits CNN (MLflow models-from-code): the model is built from code, not unpickled."""
from mlflow.models import set_model

from {module} import {cls}

set_model({cls}())
'''


class RegistryError(DigitsError):
    """A registry operation cannot be done (no such model or version, bad alias); one line for the user."""


@dataclass(frozen=True)
class Promotion:
    """What registering a version did: the version, whether it became champion, the alias it got and why."""

    model_name: str
    version: int
    promoted: bool
    alias: str
    reason: str


def signature() -> ModelSignature:
    """The served model's signature: one ``image`` column in, digit / confidence / probabilities out.

    ``image`` is typed Any because a row is either base64 PNG/JPEG text or 28x28 / 784 pixel values: MLflow
    cannot type such a column, and one column lets ``{"inputs": array}`` and ``dataframe_split`` with pictures
    reach the same model. ``preprocess`` validates every value instead. The param ``mode`` (``digit``, the default,
    or ``number``) asks for numbers; their answer has the optional columns ``text`` and ``digits``. A param, not a
    second column: MLflow maps ``{"inputs": array}`` onto a signature of exactly one column. The param
    ``min_confidence`` (0 to 1) turns answers below it into "unsure" (digit -1, column ``unsure``); ``length`` (1-12,
    0 any) and ``pattern`` (a regular expression over digits, "" none) hold a number's reading to them.
    """
    inputs = Schema([ColSpec(AnyType(), "image")])
    outputs = Schema(
        [
            ColSpec(DataType.long, "digit", required=False),
            ColSpec(DataType.double, "confidence"),
            ColSpec(Array(DataType.double), "probabilities", required=False),
            ColSpec(DataType.string, "text", required=False),
            ColSpec(DataType.string, "digits", required=False),
            ColSpec(DataType.boolean, "unsure", required=False),
        ]
    )
    params = ParamSchema(
        [
            ParamSpec(MODE_PARAM, DataType.string, "digit"),
            ParamSpec(MIN_CONFIDENCE_PARAM, DataType.double, 0.0),
            ParamSpec(LENGTH_PARAM, DataType.long, 0),  # 0: any length
            ParamSpec(PATTERN_PARAM, DataType.string, ""),  # "": no pattern
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def input_example() -> Any:
    """Two rows: a synthetic 7 drawn dark on light as base64 PNG, and the same digit as MNIST pixel values."""
    import base64
    import io

    import pandas as pd
    from PIL import Image, ImageDraw

    from digits.serve.preprocess import to_mnist

    canvas = Image.new("L", (160, 200), 255)
    ImageDraw.Draw(canvas).line([(30, 40), (130, 40), (70, 170)], fill=0, width=14, joint="curve")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    picture = base64.b64encode(buffer.getvalue()).decode("ascii")
    return pd.DataFrame({"image": [picture, to_mnist(canvas).tolist()]})


def serving_requirements(names: tuple[str, ...] = SERVING_REQUIREMENTS) -> list[str]:
    """Pinned pip requirements of a served model: the installed versions of ``names``."""
    pins = []
    for name in names:
        version = importlib.metadata.version(name).split("+")[0]  # torch "2.x+cpu": the local label is not on PyPI
        pins.append(f"{name}=={version}")
    return pins


def log_cnn_model(checkpoint_dir: str | Path, name: str = "model", reader: str | Path | None = None) -> ModelInfo:
    """Log the CNN checkpoint (weights.pt + config.json) as the serving pyfunc into the active run.

    Models-from-code with the serving modules as ``code_paths``: nothing is pickled. Logs the signature, an
    input example and pinned pip requirements. Keep the returned ``ModelInfo.model_uri`` to register it.
    ``reader``: the line reader's folder (weights, config, calibration), which then reads ``mode=number``.
    """
    checkpoint_dir = Path(checkpoint_dir)
    missing = [f for f in (WEIGHTS_FILE, CONFIG_FILE) if not (checkpoint_dir / f).is_file()]
    if missing:
        raise RegistryError(f"{checkpoint_dir} is not a checkpoint: missing {', '.join(missing)}")
    artifacts = {"checkpoint": str(checkpoint_dir), **({"reader": str(reader)} if reader else {})}
    return _log_pyfunc(name, "digits.serve.serving", "DigitClassifier", artifacts, SERVING_REQUIREMENTS)


def log_onnx_model(onnx_path: str | Path, name: str = "onnx-model", reader: str | Path | None = None) -> ModelInfo:
    """Log an exported graph (``digits.mlops.export``) as the ONNX-backed serving pyfunc into the active run.

    The same signature, input example and input handling as ``log_cnn_model``'s; its requirements hold
    onnxruntime instead of torch, and its bundled code imports no torch. ``reader``: the folder of the line reader's
    graph (``reader_export``), which then reads ``mode=number``.
    """
    from digits.serve.onnx_model import ONNX_ARTIFACT, READER_ONNX_ARTIFACT

    if not Path(onnx_path).is_file():
        raise RegistryError(f"{onnx_path} is not an ONNX file")
    return _log_pyfunc(
        name,
        "digits.serve.onnx_model",
        "OnnxDigitClassifier",
        {ONNX_ARTIFACT: str(onnx_path), **({READER_ONNX_ARTIFACT: str(reader)} if reader else {})},
        ONNX_SERVING_REQUIREMENTS,
    )


def _log_pyfunc(
    name: str, module: str, cls: str, artifacts: dict[str, str], requirements: tuple[str, ...]
) -> ModelInfo:
    if mlflow.active_run() is None:
        raise RegistryError("logging a model needs an active MLflow run (mlflow.start_run())")
    package = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="digits-model-") as tmp:
        bundle = Path(tmp) / "digits"
        for file in serving_files():
            (bundle / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(package / file, bundle / file)
        entry = Path(tmp) / "digits_model.py"
        entry.write_text(_ENTRY_POINT.format(module=module, cls=cls))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(entry),
            artifacts=artifacts,
            code_paths=[str(bundle)],
            signature=signature(),
            input_example=input_example(),
            pip_requirements=serving_requirements(requirements),
        )


def register_model(
    model_uri: str,
    *,
    model_name: str = CNN_MODEL_NAME,
    test_accuracy: float,
    run_id: str,
    data_digest: str,
    git_commit: str | None = None,
    description: str | None = None,
    number_exact_match: float | None = None,
) -> Promotion:
    """Register ``model_uri`` as a new version of ``model_name``, tag it, and move ``champion`` if it is better.

    Tags: test_accuracy, test_number_exact_match (when given: the version carries the line reader), source_run_id,
    data_digest, git_commit (``None``: the checkout's HEAD, if any). The version gets ``champion`` by
    ``promotion.decide``, else ``challenger``; the reason is set as the ``promotion`` tag of the version and of run
    ``run_id``.
    """
    return _register(
        model_uri, model_name, test_accuracy, number_exact_match, run_id, data_digest, git_commit, description
    )


def register_baseline(model_uri: str, *, model_name: str = BASELINE_MODEL_NAME, **tags: Any) -> Promotion:
    """Register the baseline (logistic regression) as ``digits-baseline``: ``register_model``'s tags and promotion rule."""
    return register_model(model_uri, model_name=model_name, **tags)


def set_alias(model_name: str, alias: str, version: int | str) -> int | None:
    """Point ``alias`` of ``model_name`` at ``version`` (explicit promotion or roll-back); return the version it left.

    Raises ``RegistryError`` for a model or version that does not exist or an alias MLflow refuses.
    """
    client = MlflowClient()
    version = _version_number(version)
    _get_model(client, model_name)
    try:
        client.get_model_version(model_name, str(version))
    except MlflowException as exc:
        if not _not_found(exc):
            raise RegistryError(f"cannot read {model_name} version {version}: {first_line(exc)}") from None
        raise RegistryError(
            f"{model_name} has no version {version} (versions: {_versions_text(client, model_name)})"
        ) from None
    previous = _alias_version(client, model_name, alias)
    try:
        client.set_registered_model_alias(model_name, alias, str(version))
    except MlflowException as exc:
        raise RegistryError(f"cannot set alias {alias!r} of {model_name}: {first_line(exc)}") from None
    was = f"version {previous.version}" if previous else "no version"
    client.set_model_version_tag(
        model_name, str(version), PROMOTION_TAG, f"alias {alias} set by hand (it was on {was})"
    )
    return int(previous.version) if previous else None


def current_git_commit(path: str | Path | None = None) -> str | None:
    """The commit checked out at ``path`` (default: this package's directory); ``None`` outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=path or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


# --- internals ---------------------------------------------------------------------------------------------


def _register(
    model_uri: str,
    model_name: str,
    test_accuracy: float,
    number_exact_match: float | None,
    run_id: str,
    data_digest: str,
    git_commit: str | None,
    description: str | None,
) -> Promotion:
    accuracy = _share(test_accuracy, TAG_ACCURACY)
    numbers = None if number_exact_match is None else _share(number_exact_match, TAG_NUMBERS)
    commit = git_commit or current_git_commit() or "unknown"
    client = MlflowClient()
    tags = {TAG_ACCURACY: repr(accuracy), TAG_RUN: run_id, TAG_DIGEST: data_digest, TAG_COMMIT: commit}
    if numbers is not None:
        tags[TAG_NUMBERS] = repr(numbers)
    try:
        registered = mlflow.register_model(model_uri, model_name, tags=tags)
    except MlflowException as exc:
        raise RegistryError(f"cannot register {model_uri} as {model_name}: {first_line(exc)}") from None
    version = int(registered.version)
    if description:
        client.update_model_version(model_name, str(version), description=fit_description(description, run_id))
    champion = _alias_version(client, model_name, CHAMPION)
    promoted, reason = decide(version, accuracy, numbers, (champion.version, champion.tags) if champion else None)
    if champion is None:
        reason = reason.replace("the first champion", f"the first champion of {model_name}")
    alias = CHAMPION if promoted else CHALLENGER
    client.set_registered_model_alias(model_name, alias, str(version))
    client.set_model_version_tag(model_name, str(version), PROMOTION_TAG, reason)
    if run_id:
        client.set_tag(run_id, PROMOTION_TAG, reason)
        client.set_tag(run_id, "registered_version", f"{model_name}/{version}")
    return Promotion(model_name=model_name, version=version, promoted=promoted, alias=alias, reason=reason)


def _share(value: float, name: str) -> float:
    number = float(value)
    if not (math.isfinite(number) and 0 <= number <= 1):
        raise RegistryError(f"{name} must be a number from 0 to 1, got {value!r}")
    return number


def _get_model(client: MlflowClient, model_name: str) -> None:
    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        if not _not_found(exc):
            raise RegistryError(f"cannot read registered model {model_name!r}: {first_line(exc)}") from None
        names = sorted(m.name for m in client.search_registered_models(max_results=100))
        known = ", ".join(names) if names else "none"
        raise RegistryError(f"no registered model named {model_name!r} (registered: {known})") from None


def _alias_version(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if _not_found(exc) or exc.error_code == ErrorCode.Name(ErrorCode.INVALID_PARAMETER_VALUE):
            return None
        raise


def _version_number(version: int | str) -> int:
    try:
        number = int(str(version).strip())
    except ValueError:
        raise RegistryError(f"version must be a positive integer, got {version!r}") from None
    if number < 1:
        raise RegistryError(f"version must be a positive integer, got {version!r}")
    return number


def _versions_text(client: MlflowClient, model_name: str) -> str:
    escaped = model_name.replace("'", "\\'")
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{escaped}'"))
    return ", ".join(map(str, versions)) if versions else "none"


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


# MLflow's model_versions.description column is VARCHAR(5000): PostgreSQL refuses a longer text (SQLite does not).
MAX_DESCRIPTION = 5000


def fit_description(text: str, run_id: str, limit: int = MAX_DESCRIPTION) -> str:
    """``text`` if it fits MLflow's description column, else its first whole sections and where the rest is."""
    if len(text) <= limit:
        return text
    pointer = f"\n\n(The full model card, {len(text):,} characters, is `model_card.md` in run `{run_id}`.)"
    head = text[: limit - len(pointer)]
    cut = head.rfind("\n## ")  # end at a section's start, so no table is cut in half
    return (head[:cut] if cut > 0 else head).rstrip() + pointer
