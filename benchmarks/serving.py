"""Latency and throughput of the served model over HTTP: the real `mlflow models serve`, real MNIST digits.

    python benchmarks/serving.py --data_dir ../shared/data/mnist --quick_model
    python benchmarks/serving.py --data_dir ../shared/data/mnist --model_uri models:/digits-cnn@champion
    python benchmarks/serving.py --data_dir ../shared/data/mnist --url http://127.0.0.1:5001

``--quick_model`` trains the default network (1 epoch on 3,000 images: the speed of digits does not depend on
the weights) into a temporary sqlite store and serves it, or registers ``--checkpoint`` there instead;
``--model_uri`` serves a registered model from $MLFLOW_TRACKING_URI; ``--url`` measures a server that is already running. One client, one connection
(keep-alive), requests one after another; payloads are encoded before the clock starts.

Latency, one image per request: p50 and p99 over ``--requests`` requests, for 28x28 pixel values
(``{"inputs": ...}``), for a drawing (a 300x300 PNG, dark ink on white, ``dataframe_split``) and for a 5-digit
number (a drawn or photographed PNG of about 200x600 with the param ``mode=number``; with ``--quick_model`` the
weights are a 1-epoch network's, whose doubt makes the reader try more cuts than a trained one).
Throughput: images per second for batches of 1, 32 and 1,000 pixel-value images (``{"inputs": ...}``), and
for 1,000 as ``dataframe_split`` rows. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import requests
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from digits.learn.data import load_mnist  # noqa: E402
from digits.serve.contract import MODE_PARAM, request_body  # noqa: E402


def server_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say which server to measure: shared by this script and soak.py."""
    parser.add_argument("--data_dir", default="", help="MNIST IDX files (default: $DIGITS_DATA_DIR or the cache)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--quick_model", action="store_true", help="train and register a throw-away model with the default architecture"
    )
    source.add_argument("--url", default="", help="measure a server that is already running at this URL")
    parser.add_argument(
        "--model_uri", default="models:/digits-cnn@champion", help="model to serve (default: %(default)s)"
    )
    parser.add_argument(
        "--checkpoint",
        default="",
        help="with --quick_model: register this checkpoint folder (weights.pt + config.json) instead of training a throw-away network (default: train one)",
    )
    parser.add_argument(
        "--reader",
        default="",
        help="with --quick_model: the line reader's folder (weights.pt, reader_config.json, reader_calibration.json) the model carries for mode=number (default: none, numbers are cut)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    server_arguments(parser)
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="with --quick_model: serve digits-cnn (torch) or digits-cnn-onnx (ONNX Runtime) (default: %(default)s)",
    )
    parser.add_argument(
        "--requests", type=int, default=300, help="requests per latency measurement (default: %(default)s)"
    )
    parser.add_argument(
        "--seconds", type=float, default=6.0, help="duration of each throughput measurement (default: %(default)s)"
    )
    return parser.parse_args(argv)


# --- payloads ----------------------------------------------------------------------------------------------------


def drawing_png(image: np.ndarray) -> str:
    """An MNIST digit as a drawing: 300x300, dark ink on white, thicker strokes, off centre; base64 PNG."""
    big = Image.fromarray(image).resize((220, 220), Image.Resampling.BILINEAR).filter(ImageFilter.MaxFilter(5))
    canvas = Image.new("L", (300, 300), 0)
    canvas.paste(big, (60, 30))
    buffer = io.BytesIO()
    Image.eval(canvas, lambda v: 255 - v).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def number_bodies(images: np.ndarray, labels: np.ndarray) -> list[bytes]:
    """One 5-digit number per request (``digits.evaluate.number_eval``: gaps and touching, drawn and photographed, seed 0)
    as a PNG with the param ``mode=number``."""
    from digits.evaluate.number_eval import number_set

    bodies = []
    for sample in number_set(images, labels, 25, seed=0, lengths=(5,)):
        buffer = io.BytesIO()
        Image.fromarray(sample.picture).save(buffer, format="PNG")
        picture = base64.b64encode(buffer.getvalue()).decode()
        bodies.append(json.dumps(request_body([picture], {MODE_PARAM: "number"})).encode())
    return bodies


def payloads(images: np.ndarray, labels: np.ndarray) -> dict[str, list[bytes]]:
    """Request bodies, encoded once: several different ones per kind, so no cache can help."""
    rng = np.random.default_rng(0)
    pick = lambda n: images[rng.choice(len(images), n, replace=False)]  # noqa: E731
    inputs = lambda batch: json.dumps(request_body(batch, layout="inputs")).encode()  # noqa: E731
    split = lambda rows: json.dumps(request_body(rows)).encode()  # noqa: E731
    return {
        "array x1": [inputs(pick(1)) for _ in range(50)],
        "picture x1": [split([drawing_png(pick(1)[0])]) for _ in range(50)],
        "array x32": [inputs(pick(32)) for _ in range(10)],
        "array x1000": [inputs(pick(1000)) for _ in range(3)],
        "array x1000 (dataframe_split)": [split(pick(1000).tolist()) for _ in range(3)],
        "number x1": number_bodies(images, labels),
    }


# --- measuring ---------------------------------------------------------------------------------------------------


def post(session: requests.Session, url: str, body: bytes) -> None:
    response = session.post(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=120)
    if response.status_code != 200:
        raise SystemExit(f"the server answered {response.status_code}: {response.text[:300]}")


def latency(session: requests.Session, url: str, bodies: list[bytes], n: int) -> dict[str, float]:
    for body in bodies[:10]:  # warm-up
        post(session, url, body)
    times = []
    for i in range(n):
        start = time.perf_counter()
        post(session, url, bodies[i % len(bodies)])
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "requests": n}


def throughput(
    session: requests.Session, url: str, bodies: list[bytes], batch: int, seconds: float
) -> dict[str, float]:
    post(session, url, bodies[0])  # warm-up
    start, count = time.perf_counter(), 0
    while count < 5 or time.perf_counter() - start < seconds:  # at least 5 requests, even for big batches
        post(session, url, bodies[count % len(bodies)])
        count += 1
    elapsed = time.perf_counter() - start
    return {"images_per_second": batch * count / elapsed, "requests": count, "seconds": elapsed}


# --- the server ---------------------------------------------------------------------------------------------------


def quick_model(data_dir: str, root: Path, checkpoint: str = "", reader: str = "") -> str:
    """Train the default network briefly (or load ``checkpoint``), log and register it in a sqlite store under
    ``root``; return the store URI."""
    import mlflow

    from digits.core.config import TrainConfig
    from digits.learn.data import split_train_val
    from digits.learn.train import fit
    from digits.mlops.export import export_onnx
    from digits.mlops.registry import log_cnn_model, log_onnx_model, register_model
    from digits.serve.model import load_checkpoint, save_checkpoint

    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mnist = load_mnist(data_dir or None)
    if checkpoint:
        model, config = load_checkpoint(checkpoint)
    else:
        config = TrainConfig(epochs=1, subset=3000, device="cpu")
        split = split_train_val(mnist.train_labels, config.val_size, config.seed, config.subset)
        model = fit(config, (mnist.train_images[split.train], mnist.train_labels[split.train])).model
    experiment = mlflow.create_experiment("serving-benchmark", artifact_location=(root / "artifacts").as_uri())
    onnx_reader = None
    if reader:
        from digits.mlops.reader_export import export_reader
        from digits.serve.line_reader import read_calibration
        from digits.serve.reader import load_reader

        net, reader_config = load_reader(reader)
        onnx_reader = export_reader(net, reader_config, root / "reader_onnx", read_calibration(reader))
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_cnn_model(save_checkpoint(model, config, root / "checkpoint"), reader=reader or None)
        onnx = log_onnx_model(export_onnx(model, config, root / "model.onnx"), reader=onnx_reader)
    register_model(
        onnx.model_uri,
        model_name="digits-cnn-onnx",
        test_accuracy=0.5,
        run_id=run.info.run_id,
        data_digest=mnist.digest,
    )
    register_model(info.model_uri, test_accuracy=0.5, run_id=run.info.run_id, data_digest=mnist.digest)
    return uri


def start_server(
    model_uri: str, log_path: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> tuple[subprocess.Popen, str]:
    """``mlflow models serve -m MODEL_URI --env-manager local`` on a free port, in its own session; (process, url) once /ping answers.

    ``env``: variables to set for the server (``MLFLOW_TRACKING_URI``, ...). Raises ``RuntimeError`` with the end of
    its log when it does not answer within ``timeout`` seconds (the tests use it too).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = Path(sys.executable).parent
    # The scoring server starts `uvicorn` from PATH: this venv's bin must come first.
    env = {**os.environ, **(env or {}), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [
        str(bin_dir / "mlflow"),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return process, url
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(process)
            raise RuntimeError(f"the scoring server did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


def server_from_arguments(
    args: argparse.Namespace, tmp: Path, backend: str = "torch"
) -> tuple[subprocess.Popen | None, str, str]:
    """(process, url, model uri) for ``server_arguments``: the running ``--url``, or a server this script starts."""
    if args.url:
        return None, args.url.rstrip("/"), args.url
    model_uri = args.model_uri
    if args.quick_model:
        quick_model(args.data_dir, tmp, args.checkpoint, getattr(args, "reader", ""))
        model_uri = "models:/digits-cnn-onnx@champion" if backend == "onnx" else "models:/digits-cnn@champion"
    try:
        process, url = start_server(model_uri, tmp / "server.log")
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    return process, url, model_uri


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: mlflow and the uvicorn it started
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def machine() -> str:
    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores, {model}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    mnist = load_mnist(args.data_dir or None)
    bodies = payloads(mnist.test_images, mnist.test_labels)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="digits-bench-") as tmp:
        process, url, model_uri = server_from_arguments(args, Path(tmp), args.backend)
        try:
            session = requests.Session()
            results = {
                "latency": {
                    "array x1": latency(session, url, bodies["array x1"], args.requests),
                    "picture x1": latency(session, url, bodies["picture x1"], args.requests),
                    "number x1 (5 digits, mode=number)": latency(session, url, bodies["number x1"], args.requests),
                },
                "throughput": {
                    "array x1": throughput(session, url, bodies["array x1"], 1, args.seconds),
                    "array x32": throughput(session, url, bodies["array x32"], 32, args.seconds),
                    "array x1000": throughput(session, url, bodies["array x1000"], 1000, args.seconds),
                    "array x1000 (dataframe_split)": throughput(
                        session, url, bodies["array x1000 (dataframe_split)"], 1000, args.seconds
                    ),
                },
            }
        finally:
            if process is not None:
                stop_server(process)
    results.update(
        date=date.today().isoformat(),
        machine=machine(),
        load_average_before=round(load_before, 2),
        load_average_after=round(os.getloadavg()[0], 2),
        model_uri=model_uri,
        command="python benchmarks/serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    print(f"{'latency, one image per request':40s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for name, r in results["latency"].items():
        print(f"  {name:38s} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}")
    print(f"{'throughput':40s} {'images/s':>8s}")
    for name, r in results["throughput"].items():
        print(f"  {name:38s} {r['images_per_second']:8.0f}")
    print(
        f"machine: {results['machine']}; load average {results['load_average_before']} before, {results['load_average_after']} after"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
