"""ONNX export of the CNN against PyTorch: parity on the 10,000 test images, size, accuracy and speed of each form.

    python benchmarks/onnx_export.py --data_dir ../shared/data/mnist                 # trains the default CNN for --epochs
    python benchmarks/onnx_export.py --data_dir ../shared/data/mnist --checkpoint DIR # a saved checkpoint instead

Forms: the PyTorch network as trained (``predict_proba``), as served (``serving.inference_model``: batch norms
folded, channels-last), the ONNX fp32 graph and the int8 graph (ONNX Runtime, CPU), and the two served pyfuncs
called in-process (``DigitClassifier`` and ``OnnxDigitClassifier``: validation, network, answer table). Figures: parameters, bytes
(state dict file, .onnx files), test accuracy, max |dp| and identical digits against PyTorch, images/s for
batches of 1,000, and p50 latency of one image (in-process, no HTTP). The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.serving import machine  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="", help="MNIST IDX files (default: $DIGITS_DATA_DIR or the cache)")
    parser.add_argument(
        "--checkpoint", default="", help="a checkpoint folder (weights.pt + config.json); default: train one"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=10,
        help="epochs of the CNN trained when no checkpoint is given (default: %(default)s)",
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="duration of each throughput measurement (default: %(default)s)"
    )
    return parser.parse_args(argv)


def images_per_second(predict, images: np.ndarray, seconds: float) -> float:
    predict(images[:1000])  # warm-up
    start, count = time.perf_counter(), 0
    while count < 3 or time.perf_counter() - start < seconds:
        predict(images[(count % 10) * 1000 : (count % 10 + 1) * 1000])
        count += 1
    return 1000 * count / (time.perf_counter() - start)


def p50_one_image_ms(predict, images: np.ndarray, n: int = 300) -> float:
    for i in range(20):
        predict(images[i : i + 1])
    times = []
    for i in range(n):
        start = time.perf_counter()
        predict(images[i : i + 1])
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1000)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from digits.core.config import TrainConfig
    from digits.learn.data import load_mnist, split_train_val
    from digits.learn.train import fit
    from digits.mlops import export
    from digits.serve import serving
    from digits.serve.model import WEIGHTS_FILE, load_checkpoint, predict_proba, save_checkpoint

    mnist = load_mnist(args.data_dir or None)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="digits-onnx-") as tmp:
        tmp = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else None
        if checkpoint is None:
            config = TrainConfig(epochs=args.epochs, device="cpu")
            split = split_train_val(mnist.train_labels, config.val_size, config.seed, config.subset)
            trained = fit(config, (mnist.train_images[split.train], mnist.train_labels[split.train])).model.cpu()
            checkpoint = save_checkpoint(trained, config, tmp / "checkpoint")
        network, config = load_checkpoint(checkpoint)
        fp32 = export.export_onnx(network, config, tmp / export.ONNX_FILE)
        int8 = export.quantize_int8(fp32, tmp / export.INT8_FILE, mnist.train_images[:500])
        served = serving.inference_model(load_checkpoint(checkpoint)[0])
        sessions = {"onnx fp32": export.session(fp32), "onnx int8": export.session(int8)}
        forms = {
            "torch": lambda x: predict_proba(network, x),
            "torch (served)": lambda x: predict_proba(served, x),
            "onnx fp32": lambda x: export.onnx_probabilities(sessions["onnx fp32"], x),
            "onnx int8": lambda x: export.onnx_probabilities(sessions["onnx int8"], x),
        }
        sizes = {
            "torch": (checkpoint / WEIGHTS_FILE).stat().st_size,
            "torch (served)": (checkpoint / WEIGHTS_FILE).stat().st_size,
            "onnx fp32": fp32.stat().st_size,
            "onnx int8": int8.stat().st_size,
        }
        # The two served pyfuncs in-process (no HTTP): the request's validation and table included.
        from types import SimpleNamespace

        import pandas as pd

        from digits.serve.onnx_model import ONNX_ARTIFACT, OnnxDigitClassifier

        pyfuncs = {"pyfunc torch": serving.DigitClassifier(), "pyfunc onnx": OnnxDigitClassifier()}
        pyfuncs["pyfunc torch"].load_context(SimpleNamespace(artifacts={serving.CHECKPOINT_ARTIFACT: str(checkpoint)}))
        pyfuncs["pyfunc onnx"].load_context(SimpleNamespace(artifacts={ONNX_ARTIFACT: str(fp32)}))
        for name, pyfunc in pyfuncs.items():
            forms[name] = (
                lambda x, f=pyfunc: np.concatenate(
                    [  # a request holds at most 1,000 images
                        np.stack(f.predict(None, pd.DataFrame({"image": list(x[i : i + 1000])}))["probabilities"])
                        for i in range(0, len(x), 1000)
                    ]
                )
            )
            sizes[name] = sizes["torch" if "torch" in name else "onnx fp32"]
        reference = forms["torch"](mnist.test_images)
        results = {}
        for name, predict in forms.items():
            proba = predict(mnist.test_images)
            results[name] = {
                "bytes": sizes[name],
                "test_accuracy": float((proba.argmax(1) == mnist.test_labels).mean()),
                "max_abs_diff_vs_torch": float(np.abs(proba - reference).max()),
                "same_digits_as_torch": int((proba.argmax(1) == reference.argmax(1)).sum()),
                "images_per_second_batch_1000": images_per_second(predict, mnist.test_images, args.seconds),
                "p50_ms_one_image": p50_one_image_ms(predict, mnist.test_images),
            }
    out = {
        "forms": results,
        "parameters": sum(p.numel() for p in network.parameters()),
        "opset": export.OPSET,
        "config": {k: config.to_dict()[k] for k in ("width", "blocks", "epochs", "seed")},
        "date": date.today().isoformat(),
        "machine": machine(),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "command": "python benchmarks/onnx_export.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(f"{out['parameters']:,} parameters; opset {export.OPSET}; 10,000 test images")
    print(
        f"{'form':16s} {'bytes':>9s} {'accuracy':>9s} {'max |dp|':>9s} {'same':>6s} {'img/s @1000':>12s} {'p50 1 img':>10s}"
    )
    for name, r in results.items():
        print(
            f"{name:16s} {r['bytes']:9,d} {100 * r['test_accuracy']:8.2f}% {r['max_abs_diff_vs_torch']:9.1e} {r['same_digits_as_torch']:6d} "
            f"{r['images_per_second_batch_1000']:12,.0f} {r['p50_ms_one_image']:8.2f} ms"
        )
    print(
        f"machine: {out['machine']}; load average {out['load_average_before']} before, {out['load_average_after']} after"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
