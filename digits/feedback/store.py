"""The feedback loop's data: the app's answers corrected or confirmed by users, curated into a versioned dataset.

The store is a folder: ``pictures/`` holds each picture as it reached the model (PNG, or an upload's own JPEG
bytes), named by its SHA-256, written to a temporary name, fsync'd and renamed; ``feedback.jsonl`` is an
append-only table, one JSON object per line, each line carrying the SHA-256 of its own content (``sum``), appended
under an exclusive lock and fsync'd. A line that was cut short (a crash, a kill mid-write) or altered fails its
checksum and is skipped on read, so only complete entries are ever read back; the next append first ends such a
fragment with a newline. An entry holds no personal data: the picture, the 28x28 the model saw, which model
answered, its digit and confidence, the label given and a UTC timestamp.

Curation (``curate``): entries of the same image (the SHA-256 of its 28x28 bytes) collapse into one; an image given
two different labels is a conflict, listed and left out of every export. An export is ``NAME.npz`` (``images``
uint8 (N, 28, 28), ``labels`` uint8 (N,)) and the manifest ``NAME.json`` (the npz's SHA-256, count, labels per
digit, version). ``split_by_digest`` holds a seeded 20% of the images out of training, for ``feedback_accuracy``.

NumPy, Pillow and the standard library only.
"""

from __future__ import annotations

import base64
import datetime as dt
import fcntl
import hashlib
import io
import json
import os
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digits.core.errors import DigitsError

TABLE = "feedback.jsonl"
PICTURES = "pictures"
FORMAT = "digits-feedback"
FORMAT_VERSION = 1
HELD_OUT = 0.2  # share of the feedback images (by digest) never trained on: the feedback_accuracy set


class FeedbackError(DigitsError):
    """A feedback store or export cannot be read or written; one line for the user."""


def default_dir(tracking_uri: str | None = None) -> Path:
    """Next to the tracking store: ``feedback/`` beside the sqlite file of ``MLFLOW_TRACKING_URI`` (unset: MLflow's
    default ``sqlite:///mlflow.db`` in the working directory), else ``~/.cache/digits/feedback``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db") if tracking_uri is None else tracking_uri
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).expanduser().absolute().parent / "feedback"
    return Path.home() / ".cache" / "digits" / "feedback"


def image_digest(mnist: np.ndarray) -> str:
    """The SHA-256 of a 28x28 uint8 image's bytes: the identity duplicates and the held-out split go by."""
    return hashlib.sha256(np.ascontiguousarray(mnist, dtype=np.uint8).tobytes()).hexdigest()


def _check_image(mnist: Any) -> np.ndarray:
    array = np.asarray(mnist)
    if array.shape != (28, 28) or array.dtype != np.uint8:
        raise FeedbackError(f"the image the model saw must be uint8 28x28, got {array.dtype} {array.shape}")
    return array


def _check_label(label: Any) -> int:
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= int(label) <= 9:
        raise FeedbackError(f"the label must be a digit 0-9, got {label!r}")
    return int(label)


def _line(entry: dict[str, Any]) -> bytes:
    body = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    return (
        json.dumps({**entry, "sum": hashlib.sha256(body.encode()).hexdigest()}, sort_keys=True, separators=(",", ":"))
        + "\n"
    ).encode()


def _parse(raw: bytes) -> dict[str, Any] | None:
    """One table line back, or None when it is cut short, not JSON or fails its checksum."""
    try:
        entry = json.loads(raw)
        claimed = entry.pop("sum")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    body = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    return entry if hashlib.sha256(body.encode()).hexdigest() == claimed else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _picture_name(data: bytes) -> str:
    kind = "jpg" if data[:3] == b"\xff\xd8\xff" else "png"
    return f"{hashlib.sha256(data).hexdigest()}.{kind}"


@dataclass
class Store:
    """A feedback folder: ``pictures/`` and the append-only ``feedback.jsonl``."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()

    @property
    def table(self) -> Path:
        return self.root / TABLE

    def record(
        self,
        *,
        mnist: np.ndarray,
        label: int,
        model: str,
        prediction: int | None = None,
        confidence: float | None = None,
        picture: bytes | None = None,
        source: str = "app",
    ) -> dict[str, Any]:
        """Append one answer: the picture first (atomically), then its table line; return the entry."""
        entry = _new_entry(mnist, label, model, source, prediction, confidence)
        try:
            if picture:
                (self.root / PICTURES).mkdir(parents=True, exist_ok=True)
                entry["picture"] = f"{PICTURES}/{_picture_name(picture)}"
                target = self.root / entry["picture"]
                if not target.exists():
                    _write_atomically(target, picture)
            self._append(_line(entry))
        except OSError as exc:
            raise FeedbackError(f"cannot write to the feedback store {self.root}: {exc.strerror or exc}") from None
        return entry

    def record_many(self, items: Iterable[tuple[np.ndarray, int]], *, model: str, source: str) -> int:
        """Append entries without pictures (an import) in one locked, fsync'd write; return how many."""
        lines = [_line(_new_entry(image, label, model, source)) for image, label in items]
        if lines:
            try:
                self._append(b"".join(lines))
            except OSError as exc:
                raise FeedbackError(f"cannot write to the feedback store {self.root}: {exc.strerror or exc}") from None
        return len(lines)

    def _append(self, line: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.table, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one writer at a time: lines never interleave
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # end a fragment a killed writer left, so it stays one bad line
            os.write(fd, line)
            os.fsync(fd)
            if not size:
                _fsync_dir(self.root)  # a new table: its name must survive a crash too
        finally:
            os.close(fd)

    def entries(self) -> tuple[list[dict[str, Any]], int]:
        """The complete entries, in order, and how many lines were skipped (cut short or failing their checksum)."""
        try:
            raw = self.table.read_bytes()
        except FileNotFoundError:
            return [], 0
        except OSError as exc:
            raise FeedbackError(f"cannot read the feedback store {self.table}: {exc.strerror or exc}") from None
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # the part after the last newline was never finished
        good = [e for e in map(_parse, complete) if e is not None]
        skipped = sum(1 for line in complete if line.strip()) - len(good) + (1 if tail.strip() else 0)
        return good, skipped


def _new_entry(
    mnist: np.ndarray,
    label: int,
    model: str,
    source: str,
    prediction: int | None = None,
    confidence: float | None = None,
) -> dict[str, Any]:
    image = _check_image(mnist)
    return {
        "id": uuid.uuid4().hex,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "image_digest": image_digest(image),
        "mnist": base64.b64encode(image.tobytes()).decode("ascii"),
        "label": _check_label(label),
        "model": str(model),
        "source": source,
        "prediction": None if prediction is None else int(prediction),
        "confidence": None if confidence is None else float(confidence),
        "picture": None,
    }


def entry_image(entry: dict[str, Any]) -> np.ndarray:
    """The 28x28 uint8 image an entry holds."""
    return np.frombuffer(base64.b64decode(entry["mnist"]), dtype=np.uint8).reshape(28, 28)


@dataclass
class Curated:
    """The store's entries with duplicates collapsed: one image per digest with its label, and the conflicts."""

    images: np.ndarray  # uint8 (N, 28, 28), in order of first appearance
    labels: np.ndarray  # uint8 (N,)
    digests: list[str]
    conflicts: dict[str, list[int]] = field(default_factory=dict)  # digest -> the labels it was given
    entries: int = 0
    skipped: int = 0
    per_model: Counter = field(default_factory=Counter)


def curate(entries: Iterable[dict[str, Any]], skipped: int = 0) -> Curated:
    """Collapse entries of the same image; an image with two different labels is a conflict and is left out."""
    first: dict[str, np.ndarray] = {}
    labels: dict[str, set[int]] = {}
    per_model: Counter = Counter()
    count = 0
    for entry in entries:
        count += 1
        per_model[entry.get("model") or "?"] += 1
        digest = entry["image_digest"]
        first.setdefault(digest, entry_image(entry))
        labels.setdefault(digest, set()).add(int(entry["label"]))
    kept = [d for d in first if len(labels[d]) == 1]
    conflicts = {d: sorted(labels[d]) for d in first if len(labels[d]) > 1}
    images = np.stack([first[d] for d in kept]) if kept else np.zeros((0, 28, 28), np.uint8)
    return Curated(
        images, np.array([next(iter(labels[d])) for d in kept], np.uint8), kept, conflicts, count, skipped, per_model
    )


def describe(curated: Curated) -> str:
    """``digits feedback list``: counts per label and per model version, duplicates and conflicts."""
    per_label = np.bincount(curated.labels, minlength=10)
    lines = [
        f"{curated.entries} entries, {len(curated.digests) + len(curated.conflicts)} distinct images: "
        f"{len(curated.digests)} to export, {len(curated.conflicts)} with conflicting labels (not exported)"
    ]
    if curated.skipped:
        lines.append(f"{curated.skipped} incomplete or damaged lines skipped")
    lines.append("per label (exported images): " + ", ".join(f"{d}: {int(n)}" for d, n in enumerate(per_label)))
    lines += ["per model:"] + [f"  {model}: {n}" for model, n in sorted(curated.per_model.items())]
    lines += [f"conflict: image {d[:12]} labelled {', '.join(map(str, ls))}" for d, ls in curated.conflicts.items()]
    return "\n".join(lines)


def content_version(images: np.ndarray, labels: np.ndarray) -> str:
    """The dataset's version: a digest of its images and labels in order (the same content, the same version)."""
    digest = hashlib.sha256(np.ascontiguousarray(images, np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, np.uint8).tobytes())
    return digest.hexdigest()[:16]


def manifest_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export(curated: Curated, out: str | Path) -> dict[str, Any]:
    """Write ``out`` (.npz: images, labels) and its manifest (.json); return the manifest."""
    out = Path(out).expanduser()
    if out.suffix != ".npz":
        raise FeedbackError(f"the export must be a .npz file, got {out}")
    buffer = io.BytesIO()
    np.savez(buffer, images=curated.images.astype(np.uint8), labels=curated.labels.astype(np.uint8))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(out, buffer.getvalue())
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": content_version(curated.images, curated.labels),
            "sha256": _sha256_file(out),
            "count": int(len(curated.labels)),
            "per_label": {str(d): int(n) for d, n in enumerate(np.bincount(curated.labels, minlength=10))},
            "conflicts_excluded": len(curated.conflicts),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        _write_atomically(manifest_path(out), (json.dumps(manifest, indent=2) + "\n").encode())
    except OSError as exc:
        raise FeedbackError(f"cannot write the export {out}: {exc.strerror or exc}") from None
    return manifest


@dataclass(frozen=True)
class Export:
    """A verified export: its images and labels, the manifest and where it was read from."""

    images: np.ndarray
    labels: np.ndarray
    manifest: dict[str, Any]
    path: str


def load_export(path: str | Path) -> Export:
    """Read and verify an export: the manifest beside it, the npz's SHA-256, shapes, dtypes, labels and counts."""
    path = Path(path).expanduser()
    where = manifest_path(path)
    if not path.is_file():
        raise FeedbackError(
            f"{path}: no such export file (an export is NAME.npz with its manifest NAME.json beside it)"
        )
    try:
        manifest = json.loads(where.read_text())
        claimed = str(manifest["sha256"])
    except FileNotFoundError as exc:
        raise FeedbackError(
            f"{exc.filename}: file not found (an export is NAME.npz with its manifest NAME.json)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FeedbackError(f"{where}: not a feedback manifest ({type(exc).__name__})") from None
    try:
        actual = _sha256_file(path)
    except OSError as exc:
        raise FeedbackError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if actual != claimed:
        raise FeedbackError(
            f"{path}: SHA-256 {actual[:16]}... does not match its manifest's {claimed[:16]}...: damaged or altered"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise FeedbackError(f"{path}: not a feedback export ({type(exc).__name__})") from None
    _check_arrays(path, images, labels, manifest)
    return Export(images, labels, manifest, str(path.absolute()))


def _check_arrays(path: Path, images: np.ndarray, labels: np.ndarray, manifest: dict[str, Any]) -> None:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise FeedbackError(f"{path}: images must be uint8 (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.shape != (len(images),):
        raise FeedbackError(f"{path}: labels must be uint8 ({len(images)},), got {labels.dtype} {labels.shape}")
    if len(labels) and labels.max() > 9:
        raise FeedbackError(f"{path}: label {int(labels.max())} is not a digit 0-9")
    if manifest.get("count") != len(labels):
        raise FeedbackError(f"{path}: holds {len(labels)} images, its manifest says {manifest.get('count')}")


def import_export(store: Store, export_: Export) -> tuple[int, int]:
    """Add an export's images to the store (source ``import``); an image already there with that label is skipped.

    Returns (added, skipped)."""
    known = {(e["image_digest"], int(e["label"])) for e in store.entries()[0]}
    new = []
    for image, label in zip(export_.images, export_.labels):
        if (image_digest(image), int(label)) not in known:
            known.add((image_digest(image), int(label)))
            new.append((image, int(label)))
    added = store.record_many(new, model=f"import {export_.manifest.get('version', '?')}", source="import")
    return added, len(export_.labels) - added


def split_by_digest(images: np.ndarray, seed: int, held_out: float = HELD_OUT) -> np.ndarray:
    """A boolean mask of the images held out of training: a seeded ``held_out`` share of the distinct digests
    (at least one when there are two or more), every copy of a held-out image with it."""
    digests = [image_digest(image) for image in images]
    distinct = sorted(set(digests))
    n_held = int(round(held_out * len(distinct)))
    if len(distinct) >= 2:
        n_held = max(1, n_held)
    order = np.random.default_rng(seed).permutation(len(distinct))
    held = {distinct[i] for i in order[:n_held]}
    return np.array([d in held for d in digests], dtype=bool)
