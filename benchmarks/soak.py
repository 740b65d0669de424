"""Soak test of the served model: N concurrent clients for a fixed time against the real `mlflow models serve`.

    python benchmarks/soak.py --data_dir ../shared/data/mnist --quick_model --clients 8 --seconds 60
    python benchmarks/soak.py --data_dir ../shared/data/mnist --url http://127.0.0.1:5001

Each client (a thread with its own keep-alive connection) sends, at random: one 28x28 digit, one 300x300 PNG
drawing, a batch of 1,000 digits, or (a ``--bad_share`` of the requests) a bad request: malformed JSON, 1 MB
of junk, a CSV or parquet body, 1,001 images, a wrong shape, a pixel of 1e300, a gzip Content-Encoding, junk
params. The good requests' answers must equal, to the byte, those of a quiet run before the soak; the bad ones
must be small JSON 4xx. Figures: requests answered per kind, errors by kind, p50/p99 latency per kind, the
server's peak RSS (VmHWM of its processes, at rest and after the soak). The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmarks.serving import drawing_png, machine, server_arguments, server_from_arguments, stop_server  # noqa: E402
from digits.learn.data import load_mnist  # noqa: E402

JSON = "application/json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    server_arguments(parser)  # --url: a running server, then no RSS figures
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of the soak (default: %(default)s)")
    parser.add_argument("--bad_share", type=float, default=0.2, help="share of bad requests (default: %(default)s)")
    return parser.parse_args(argv)


def good_requests(images: np.ndarray) -> dict[str, list[bytes]]:
    rng = np.random.default_rng(0)
    pick = lambda n: images[rng.choice(len(images), n, replace=False)]  # noqa: E731
    split = lambda rows: json.dumps({"dataframe_split": {"columns": ["image"], "data": [[r] for r in rows]}}).encode()  # noqa: E731
    return {
        "array x1": [json.dumps({"inputs": pick(1).tolist()}).encode() for _ in range(20)],
        "picture x1": [split([drawing_png(pick(1)[0])]) for _ in range(20)],
        "array x1000": [json.dumps({"inputs": pick(1000).tolist()}).encode() for _ in range(2)],
    }


def bad_requests(image: np.ndarray) -> dict[str, tuple[bytes, dict[str, str]]]:
    import pandas as pd

    parquet = io.BytesIO()
    pd.DataFrame({"image": ["x" * 1000]}).to_parquet(parquet)
    huge = image.astype(float).reshape(784)
    huge[0] = 1e300
    return {
        "malformed JSON": (b'{"inputs": [[0, 1,', {"Content-Type": JSON}),
        "1 MB of junk": (b"\xff" * 1_000_000, {"Content-Type": JSON}),
        "CSV": (b"image\nabc\n", {"Content-Type": "text/csv"}),
        "parquet": (parquet.getvalue(), {"Content-Type": "application/vnd.apache.parquet"}),
        "1,001 images": (json.dumps({"inputs": [[0]] * 1001}).encode(), {"Content-Type": JSON}),
        "wrong shape": (json.dumps({"inputs": [[1, 2, 3]]}).encode(), {"Content-Type": JSON}),
        "pixel 1e300": (json.dumps({"inputs": [huge.tolist()]}).encode(), {"Content-Type": JSON}),
        "gzip": (b"\x1f\x8b\x08", {"Content-Type": JSON, "Content-Encoding": "gzip"}),
        "junk params": (
            json.dumps({"inputs": image[None].tolist(), "params": "junk"}).encode(),
            {"Content-Type": JSON},
        ),
    }


def peak_rss_mb(session_id: int | None) -> float | None:
    """The largest VmHWM among the processes of the server's session, in MB."""
    if session_id is None:
        return None
    peaks = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) != session_id:
                continue
            peaks += [
                int(line.split()[1]) / 1024
                for line in (entry / "status").read_text().splitlines()
                if line.startswith("VmHWM:")
            ]
        except (OSError, IndexError, ValueError):
            continue
    return max(peaks) if peaks else None


def soak(url: str, good: dict, bad: dict, reference: dict, args: argparse.Namespace) -> dict:
    stats: dict[str, dict] = defaultdict(lambda: {"n": 0, "times": [], "errors": defaultdict(int)})
    lock = threading.Lock()
    deadline = time.monotonic() + args.seconds

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        session = requests.Session()
        while time.monotonic() < deadline:
            if rng.random() < args.bad_share:
                kind = list(bad)[rng.integers(len(bad))]
                body, headers = bad[kind]
            else:
                kind = list(good)[rng.integers(len(good))]
                body, headers = good[kind][rng.integers(len(good[kind]))], {"Content-Type": JSON}
            start = time.perf_counter()
            error = None
            try:
                response = session.post(f"{url}/invocations", data=body, headers=headers, timeout=120)
                if kind in good:
                    if response.status_code != 200:
                        error = f"status {response.status_code}"
                    elif response.content != reference[body]:
                        error = "answer differs from the quiet run"
                elif not (
                    400 <= response.status_code < 500 and response.headers.get("content-type", "").startswith(JSON)
                ):
                    error = f"status {response.status_code} {response.headers.get('content-type')}"
                elif len(response.content) > 2200 or "stack_trace" in response.text:
                    error = "answer too big or with a stack trace"
            except requests.RequestException as exc:
                error = type(exc).__name__
                session = requests.Session()
            elapsed = time.perf_counter() - start
            with lock:
                s = stats[kind]
                s["n"] += 1
                s["times"].append(elapsed)
                if error:
                    s["errors"][error] += 1

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        kind: {
            "requests": s["n"],
            "p50_ms": round(float(np.percentile(s["times"], 50)) * 1000, 1),
            "p99_ms": round(float(np.percentile(s["times"], 99)) * 1000, 1),
            "errors": dict(s["errors"]),
        }
        for kind, s in sorted(stats.items())
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    mnist = load_mnist(args.data_dir or None)
    good, bad = good_requests(mnist.test_images), bad_requests(mnist.test_images[0])
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="digits-soak-") as tmp:
        process, url, _ = server_from_arguments(args, Path(tmp))
        try:
            session = requests.Session()
            reference = {}
            for bodies in good.values():  # the quiet run: one client, one request at a time
                for body in bodies:
                    response = session.post(
                        f"{url}/invocations", data=body, headers={"Content-Type": JSON}, timeout=120
                    )
                    if response.status_code != 200:
                        raise SystemExit(f"the quiet run got {response.status_code}: {response.text[:300]}")
                    reference[body] = response.content
            rest = peak_rss_mb(process.pid if process else None)
            kinds = soak(url, good, bad, reference, args)
            peak = peak_rss_mb(process.pid if process else None)
            alive = requests.get(f"{url}/ping", timeout=5).status_code == 200
        finally:
            if process is not None:
                stop_server(process)
    results = {
        "kinds": kinds,
        "requests": sum(k["requests"] for k in kinds.values()),
        "errors": sum(sum(k["errors"].values()) for k in kinds.values()),
        "peak_rss_mb_at_rest": rest,
        "peak_rss_mb_after": peak,
        "ping_after": alive,
        "clients": args.clients,
        "seconds": args.seconds,
        "bad_share": args.bad_share,
        "date": date.today().isoformat(),
        "machine": machine(),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        "command": "python benchmarks/soak.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(f"{'kind':24s} {'requests':>9s} {'p50 ms':>8s} {'p99 ms':>8s}  errors")
    for kind, k in kinds.items():
        print(f"  {kind:22s} {k['requests']:9d} {k['p50_ms']:8.1f} {k['p99_ms']:8.1f}  {k['errors'] or '-'}")
    print(
        f"{results['requests']} requests in {args.seconds:g} s by {args.clients} clients, {results['errors']} errors; "
        f"server peak RSS {rest} MB at rest, {peak} MB after; /ping after: {alive}"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
