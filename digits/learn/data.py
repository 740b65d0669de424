"""MNIST: IDX reading and validation, cache/download, splits, digests, tensors on the device, batched augmentation.

Images stay uint8 until a batch is drawn on the training device; normalisation lives in the model.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from digits.core.errors import DigitsError, first_line

log = logging.getLogger(__name__)

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# IDX magic: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions.
_MAGIC = {3: 0x00000803, 1: 0x00000801}
DATASET_NAME = "mnist"


class DataError(DigitsError):
    """MNIST could not be found, downloaded or read; the message is one line naming the file and the fault."""


@dataclass(frozen=True)
class MNIST:
    """The four MNIST arrays (uint8 images (N, 28, 28), uint8 labels (N,)) and where they came from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    digest: str
    # With feedback images appended to the training images (``feedback_train.with_extra_data``): MNIST's own digest, and the index of
    # the first appended image. ``digest`` is then the digest of both, which the training set and a study go by.
    base_digest: str = ""
    extra_start: int = 0


@dataclass(frozen=True)
class Split:
    """Indices into the 60,000 training images: the (possibly subset) training part and the validation part."""

    train: np.ndarray
    val: np.ndarray


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped if the name ends in .gz) of unsigned bytes, checking magic, dimensions and length."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot be read or decompressed ({exc})") from None
    if len(raw) < 8:
        raise DataError(f"{path}: truncated, only {len(raw)} bytes (not an IDX file)")
    magic, count = struct.unpack(">II", raw[:8])
    ndim = magic & 0xFF
    if ndim not in _MAGIC or magic != _MAGIC[ndim]:
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x} (expected 0x00000803 for images or 0x00000801 for labels)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = header + math.prod(shape)
    if len(raw) != expected:
        fault = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{path}: {fault}: {len(raw)} bytes, header {tuple(shape)} needs {expected}")
    # bytearray: a writable copy, so torch.from_numpy does not warn about read-only memory.
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=header).reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def read_mnist_dir(directory: str | Path) -> MNIST:
    """Read and validate the four IDX files in ``directory``."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DataError(f"data_dir {directory} does not exist or is not a directory")
    arrays = {}
    for key, stem in FILES.items():
        path = _find(directory, stem)
        if path is None:
            raise DataError(
                f"{directory}: missing {stem}.gz (or {stem}); it needs the four MNIST IDX files {', '.join(FILES.values())}"
            )
        arrays[key] = read_idx(path)
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        name = FILES[f"{part}_images"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{directory}/{name}: images must be 28x28, got shape {images.shape}")
        if labels.ndim != 1:
            raise DataError(
                f"{directory}/{FILES[f'{part}_labels']}: labels must be one-dimensional, got shape {labels.shape}"
            )
        if len(images) != len(labels):
            raise DataError(
                f"{directory}: {name} holds {len(images)} images but {FILES[f'{part}_labels']} {len(labels)} labels"
            )
        if len(labels) and labels.max() > 9:
            raise DataError(f"{directory}/{FILES[f'{part}_labels']}: label {int(labels.max())} is not a digit 0-9")
    digest = hashlib.sha256()
    for key in FILES:  # digest the decoded content, so gzipped and raw copies of the same data agree
        digest.update(arrays[key].tobytes())
    return MNIST(**arrays, source=str(directory.resolve()), digest=digest.hexdigest()[:16])


def default_data_dir() -> Path:
    """``$DIGITS_DATA_DIR``, else ``~/.cache/digits/mnist``."""
    return Path(os.environ.get("DIGITS_DATA_DIR") or Path.home() / ".cache" / "digits" / "mnist").expanduser()


def _has_files(directory: Path) -> bool:
    return all(_find(directory, stem) for stem in FILES.values())


def _download(directory: Path) -> Path:
    """Download MNIST with torchvision into ``directory``; return the folder that holds the IDX files."""
    raw = directory / "MNIST" / "raw"  # where torchvision keeps the original files
    if _has_files(raw):
        return raw
    hint = f"put the four files {', '.join(s + '.gz' for s in FILES.values())} into {directory} (or set data_dir / DIGITS_DATA_DIR to a folder that holds them)"
    try:
        from torchvision.datasets import MNIST as TorchvisionMNIST
    except ImportError:
        raise DataError(
            f"no MNIST files in {directory} and torchvision is not installed to download them: {hint}"
        ) from None
    log.info("MNIST not found in %s: downloading it with torchvision", directory)
    try:
        for train in (True, False):
            TorchvisionMNIST(str(directory), train=train, download=True)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError... when offline
        reason = first_line(exc)
        raise DataError(f"could not download MNIST ({reason}): {hint}") from None
    if not _has_files(raw):
        raise DataError(f"torchvision downloaded MNIST but the IDX files are not in {raw}: {hint}")
    return raw


def load_mnist(data_dir: str | os.PathLike | None = None) -> MNIST:
    """Load MNIST from ``data_dir`` if given, else from the cache directory, downloading it there if it is empty."""
    if data_dir:
        return read_mnist_dir(data_dir)
    directory = default_data_dir()
    if _has_files(directory):
        return read_mnist_dir(directory)
    return read_mnist_dir(_download(directory))


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation in which every prefix holds the classes in (nearly) their overall proportions."""
    rng = np.random.default_rng(seed)
    key = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        # Spread each class evenly over [0, 1); the jitter breaks ties between classes at random.
        key[rng.permutation(idx)] = (np.arange(len(idx)) + rng.random(len(idx))) / len(idx)
    return np.argsort(key, kind="stable")


def split_train_val(labels: np.ndarray, val_size: int, seed: int, subset: int = 0) -> Split:
    """Stratified, seeded validation split of the training labels; ``subset`` > 0 keeps that many training images."""
    if val_size >= len(labels):
        raise DataError(f"val_size {val_size} leaves no training images out of {len(labels)}")
    order = stratified_order(labels, seed)
    val, train = order[:val_size], order[val_size:]
    if subset:
        if subset > len(train):
            raise DataError(
                f"subset {subset} is larger than the {len(train)} training images left after the validation split"
            )
        train = train[:subset]
    return Split(train=np.sort(train), val=np.sort(val))


def to_device(images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 (N, 1, 28, 28) and labels as int64 on ``device``, copied once."""
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    return x, y


def augment_batch(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random affine (shift up to 3 px, rotation up to 15 degrees, scale up to 15%, times ``strength``) of a float batch.

    One ``affine_grid``/``grid_sample`` call for the whole batch, on the batch's device.
    """
    if strength <= 0:
        return x
    n = x.shape[0]
    rand = torch.rand(n, 4, device=x.device, generator=generator) * 2 - 1  # uniform in [-1, 1)
    angle = rand[:, 0] * (math.radians(15) * strength)
    scale = 1 + rand[:, 1] * (0.15 * strength)
    # affine_grid works in [-1, 1] coordinates: one pixel of 28 is 2/28.
    shift = rand[:, 2:] * (3 * strength * 2 / 28)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
