"""A picture of a handwritten number (1 to 12 digits on one line, left to right) to its digits, boxes and confidences,
by cutting: the number mode of a model logged without the line reader (``line_reader`` reads for those with one).

The ink is found the way ``preprocess.to_mnist`` finds it (``preprocess.ink_map``), max-pooled to a line about
48 pixels high, cut into digits, and every digit goes through the rest of ``to_mnist``
(``preprocess.ink_to_mnist``) and the same network. Cutting:

- connected components of the ink (8-neighbours); specks far smaller than the digits are dropped;
- components that overlap horizontally by half the narrower one's width are one digit (the parts of a broken 5
  or 4, a flag written apart from its body);
- neighbouring groups closer than 0.15 of the line's height may be one digit drawn in pieces, and a group wider
  than one digit (MNIST's digits are 0.75 of their height wide, median; 0.3 for a 1, 1.05 at the 95th percentile)
  may be touching digits, unless the classifier reads it whole with confidence and it is no wider than a wide
  digit: the candidate cuts are the deepest minima of its vertical ink profile and the even shares of its width
  for k near width / (0.75 x height);
- the classifier decides: of all the ways to read the line (groups alone, joined, cut), the chain whose digits
  read most confidently is kept (sum of log-confidences, a small bonus per digit, a prior against digits wider
  than MNIST's or much shorter than the line), by dynamic programming.

The classifier is any callable ``proba(uint8 (N, 28, 28)) -> (N, 10)`` probabilities: the torch model, the ONNX
graph, or a pyfunc. The number's confidence is the product of its digits'. Needs numpy and scipy.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from digits.serve.decode import decode_image
from digits.serve.preprocess import MAX_BATCH_PIXELS, InputError, ink_map, ink_to_mnist, max_pool

__all__ = ["MAX_DIGITS", "DigitReading", "NumberReading", "read_each", "read_number", "read_numbers"]

MAX_DIGITS = 12
Proba = Callable[[np.ndarray], np.ndarray]

_ASPECT = 0.75  # MNIST's median digit width / height (test set bounding boxes)
_SINGLE_MAX = 1.4  # a group at most this many heights wide may be one digit (a wide 0 is 1.05, 95th percentile)
_RUN_MAX = 1.5  # neighbouring groups this wide together may be one digit drawn in pieces (a 4's two strokes)
_SPLIT_MIN = 1.0  # a group this many heights wide may also be two touching digits (a 1 against a 4)
_PIECE_MIN, _PIECE_MAX = 0.15, 1.3  # a cut digit's width, in line heights
_MERGE_OVERLAP = 0.5  # of the narrower component's width: parts of one digit
_SPECK = 0.03  # of the largest component's area (or under a third of the tallest's height): a fragment or noise
_WIDTH_PRIOR = 0.3  # weight of the width prior against the log-confidence of a cut's digits
_MAX_MINIMA = 6  # profile minima tried as cuts in one group, the deepest first (12 read no better, 1.3x slower)
_JOIN_GAP = 0.15  # of the line's height: groups closer than this may be parts of one digit
_DIGIT_BONUS = 0.1  # per digit read, so that two confident digits beat one doubtful digit over both
_SURE = 0.9  # a group read whole at least this confidently, and at most _SURE_WIDTH heights wide, is not cut
_SURE_WIDTH = 1.15
_CUT_MERGE = 0.08  # of the line's height: candidate cuts closer than this to a kept one are the same cut
_LINE_SIDE = 48  # the ink map is max-pooled until the line is at most this many pixels high (about 2x MNIST's box)
_Piece = tuple[np.ndarray, tuple[int, int, int, int]]  # a candidate digit: its MNIST frame and box (map pixels)
_Read = tuple[tuple[int, int, int, int], np.ndarray]  # a digit read: its box and its ten probabilities


@dataclass(frozen=True)
class DigitReading:
    """One digit of a number: the digit, its probability and its box (x0, y0, x1, y1) in the picture's pixels."""

    digit: int
    confidence: float
    box: tuple[int, int, int, int]

    def as_dict(self) -> dict[str, Any]:
        return {"digit": self.digit, "confidence": self.confidence, "box": list(self.box)}


@dataclass(frozen=True)
class NumberReading:
    """A number read from a picture: its text, confidence (the product of its digits') and digits left to right."""

    text: str
    confidence: float
    digits: tuple[DigitReading, ...]

    def digits_json(self) -> str:
        return json.dumps([d.as_dict() for d in self.digits])


@dataclass
class _Group:
    x0: int
    x1: int  # exclusive
    y0: int
    y1: int
    ids: list[int]

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def read_numbers(items: Sequence[Any], proba: Proba) -> list[NumberReading]:
    """Read each item (a picture: base64 text, bytes, PIL image or array) as a number; one request's budget of pixels.

    The message of an ``InputError`` names the first bad item by its position.
    """
    return read_each(items, lambda image: read_number(image, proba))


def read_each(items: Sequence[Any], read: Callable[[Any], Any]) -> list[Any]:
    """``read`` applied to each item's picture (base64 text or bytes decoded, a list made an array), within one
    request's budget of pixels; an ``InputError`` names the first bad item by its position."""
    if len(items) == 0:
        raise InputError("empty batch: send at least one image")
    budget, out = MAX_BATCH_PIXELS, []
    for i, item in enumerate(items):
        try:
            image = (
                decode_image(item)
                if isinstance(item, (str, bytes, bytearray))
                else np.asarray(item)
                if isinstance(item, (list, tuple))
                else item
            )
            size = image.size if hasattr(image, "getpixel") else getattr(image, "shape", (0, 0))[:2]
            budget -= int(size[0]) * int(size[1])
            if budget < 0:
                raise InputError(
                    f"the pictures of this request have more than {MAX_BATCH_PIXELS:,} pixels together, the limit: send fewer per request"
                )
            out.append(read(image))
        except InputError as exc:
            raise InputError(f"image {i}: {exc}") from None
        except ValueError as exc:  # np.asarray of ragged lists
            raise InputError(f"image {i}: not a picture or an array of pixel values ({str(exc)[:100]})") from None
    return out


def read_number(image: Any, proba: Proba) -> NumberReading:
    """Read the number in ``image`` (what ``preprocess.to_mnist`` takes) with the classifier ``proba``."""
    ink, scale = ink_map(image)
    ink, factor = _reduce(ink)
    scale *= factor
    labels, n = ndimage.label(ink > 0, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        raise InputError("no number found: the image is blank")
    groups, height = _groups(labels, n)
    if len(groups) > MAX_DIGITS:
        raise InputError(f"found {len(groups)} separate marks, more than the {MAX_DIGITS} digits a number may have")
    read = _read_line(ink, labels, groups, height, proba)
    if not read:
        raise InputError("no number found: the ink is too small to be digits")
    if len(read) > MAX_DIGITS:
        raise InputError(f"read {len(read)} digits, more than the {MAX_DIGITS} a number may have")
    digits = tuple(
        DigitReading(int(row.argmax()), float(row.max()), tuple(int(round(v * scale)) for v in box))
        for box, row in read
    )  # type: ignore[misc]
    return NumberReading("".join(str(d.digit) for d in digits), float(np.prod([d.confidence for d in digits])), digits)


def _reduce(ink: np.ndarray) -> tuple[np.ndarray, int]:
    """The ink map max-pooled by a whole factor so that the line of ink is at most ``_LINE_SIDE`` pixels high (a
    hairline survives max-pooling), and the factor. Every candidate digit is framed from this map: at 100-pixel
    digits, framing was 0.55 ms a candidate and two thirds of the reading time."""
    rows = np.flatnonzero(ink.any(axis=1))
    factor = max(1, (rows[-1] - rows[0] + 1) // _LINE_SIDE if rows.size else 1)
    return max_pool(ink, factor), factor


def _groups(labels: np.ndarray, n: int) -> tuple[list[_Group], float]:
    """The digits' groups of components, left to right, and the line's height (the median group's).

    Small components (under ``_SPECK`` of the largest's area, or a third of the tallest's height) join a group
    they overlap horizontally (a flag drawn apart); elsewhere, and when tiny, they are noise and dropped."""
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    parts = [
        _Group(w[1].start, w[1].stop, w[0].start, w[0].stop, [i])
        for i, w in enumerate(ndimage.find_objects(labels), start=1)
        if w is not None
    ]
    tallest = max(g.height for g in parts)
    small = [(areas[g.ids[0] - 1] < _SPECK * areas.max() or g.height < tallest / 3) for g in parts]
    groups = _merge([g for g, s in zip(parts, small) if not s])
    for g, s in zip(parts, small):
        if not s or areas[g.ids[0] - 1] < _SPECK * areas.max() / 3 or not groups:
            continue
        host = max(groups, key=lambda h: min(h.x1, g.x1) - max(h.x0, g.x0))
        if min(host.x1, g.x1) - max(host.x0, g.x0) >= _MERGE_OVERLAP * g.width:
            host.x0, host.x1, host.y0, host.y1 = (
                min(host.x0, g.x0),
                max(host.x1, g.x1),
                min(host.y0, g.y0),
                max(host.y1, g.y1),
            )
            host.ids.append(g.ids[0])
    return groups, float(np.median([g.height for g in groups]))


def _merge(groups: list[_Group]) -> list[_Group]:
    """Join components that overlap horizontally by half the narrower one's width, until none do; left to right."""
    groups = sorted(groups, key=lambda g: g.x0)
    merged = True
    while merged:
        merged = False
        for a, b in itertools.combinations(range(len(groups)), 2):
            ga, gb = groups[a], groups[b]
            overlap = min(ga.x1, gb.x1) - max(ga.x0, gb.x0)
            if overlap >= _MERGE_OVERLAP * min(ga.width, gb.width):
                groups[a] = _joined(ga, gb)
                del groups[b]
                merged = True
                break
    return sorted(groups, key=lambda g: g.x0)


def _joined(a: _Group, b: _Group) -> _Group:
    return _Group(min(a.x0, b.x0), max(a.x1, b.x1), min(a.y0, b.y0), max(a.y1, b.y1), a.ids + b.ids)


def _read_line(ink: np.ndarray, labels: np.ndarray, groups: list[_Group], height: float, proba: Proba) -> list[_Read]:
    """The digits of the line: each run of neighbouring groups read as one digit (a stroke drawn in pieces) or a wide
    group cut into several, whichever chain of readings scores highest (log-confidence minus the shape prior).

    Two classifier batches: every group and run read whole, then the cuts of the groups that may be touching
    digits (wider than one digit, or as wide as one but read with doubt). A confident digit of ordinary width is
    not cut: cutting it only made candidates (two thirds of the time) and misreads (a 0 read as 10)."""
    runs = _runs(groups, height)
    singles = {
        span: _piece(_group_ink(ink, labels, g), 0, g.width, g)
        for span, g in runs.items()
        if g.width <= (_SINGLE_MAX if span[1] == span[0] + 1 else _RUN_MAX) * height
    }
    singles = {span: piece for span, piece in singles.items() if piece is not None}
    options: dict[tuple[int, int], tuple[list[_Read], float]] = {}
    for (span, (_, box)), row in zip(singles.items(), _classify([piece[0] for piece in singles.values()], proba)):
        options[span] = ([(box, row)], _score(row, box, height))
    wide = [span for span, g in runs.items() if span[1] == span[0] + 1 and g.width > _SPLIT_MIN * height]
    doubtful = [
        span
        for span in wide
        if runs[span].width > _SURE_WIDTH * height or span not in options or options[span][0][0][1].max() < _SURE
    ]
    cuts = {span: _split_candidates(ink, labels, runs[span], height) for span in doubtful}
    rows = iter(_classify([piece[0] for _, pieces in cuts.values() for piece in pieces.values()], proba))
    for span, (paths, pieces) in cuts.items():
        read = {cut: (box, next(rows)) for cut, (_, box) in pieces.items()}
        score = {cut: _score(row, box, height) for cut, (box, row) in read.items()}
        for path in paths:
            chain, value = _best_path(path, score)
            if chain is not None and (span not in options or value > options[span][1]):
                options[span] = ([read[cut] for cut in chain], value)
    best: dict[int, tuple[float, list[_Read]]] = {0: (0.0, [])}
    for j in range(1, len(groups) + 1):
        chains = [
            (best[i][0] + options[(i, j)][1], best[i][1] + options[(i, j)][0]) for i in range(j) if (i, j) in options
        ]
        best[j] = max(chains, key=lambda c: c[0]) if chains else best[j - 1]  # a group nothing reads is skipped
    return best[len(groups)][1]


def _classify(frames: list[np.ndarray], proba: Proba) -> np.ndarray:
    """The classifier's probabilities (float64) for a list of MNIST frames, in one call; none for no frames."""
    return np.asarray(proba(np.stack(frames)), dtype=np.float64) if frames else np.zeros((0, 10))


def _runs(groups: list[_Group], height: float) -> dict[tuple[int, int], _Group]:
    """Each group alone, and each run of neighbours closer than ``_JOIN_GAP`` and together at most ``_RUN_MAX`` wide."""
    runs: dict[tuple[int, int], _Group] = {}
    for i in range(len(groups)):
        run = groups[i]
        runs[(i, i + 1)] = run
        for j in range(i + 2, len(groups) + 1):
            if groups[j - 1].x0 - run.x1 > _JOIN_GAP * height:
                break
            run = _joined(run, groups[j - 1])
            if run.width > _RUN_MAX * height:
                break
            runs[(i, j)] = run
    return runs


def _score(row: np.ndarray, box: tuple[int, int, int, int], height: float) -> float:
    """Log-confidence of a digit minus the prior on its shape: MNIST's aspect ratios (its width against the larger
    of its own height and the line's, so a dash-like piece counts as wide), and most of the line's height."""
    own = max(box[3] - box[1], height)
    shape = _width_penalty((box[2] - box[0]) / own) + max(0.0, 0.7 - (box[3] - box[1]) / height) / 0.1
    return float(np.log(max(float(row.max()), 1e-9))) - _WIDTH_PRIOR * shape + _DIGIT_BONUS


def _group_ink(ink: np.ndarray, labels: np.ndarray, group: _Group) -> np.ndarray:
    window = labels[group.y0 : group.y1, group.x0 : group.x1]
    return np.where(np.isin(window, group.ids), ink[group.y0 : group.y1, group.x0 : group.x1], 0).astype(np.float32)


def _piece(ink: np.ndarray, a: int, b: int, group: _Group) -> _Piece | None:
    """The MNIST frame and box (in map pixels) of columns a:b of a group's ink; None when they hold too little ink."""
    part = ink[:, a:b]
    rows, cols = np.flatnonzero(part.any(axis=1)), np.flatnonzero(part.any(axis=0))
    if rows.size == 0 or max(rows[-1] - rows[0], cols[-1] - cols[0]) < 2:
        return None
    crop = part[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    box = (
        group.x0 + a + int(cols[0]),
        group.y0 + int(rows[0]),
        group.x0 + a + int(cols[-1]) + 1,
        group.y0 + int(rows[-1]) + 1,
    )
    return ink_to_mnist(crop), box


def _split_candidates(
    ink: np.ndarray, labels: np.ndarray, group: _Group, height: float
) -> tuple[list[list[list[int]]], dict[tuple[int, int], _Piece]]:
    """A wide group's candidate cut columns (the minima of its vertical ink profile, and the even shares of the
    width for k near width / the usual digit width) and the piece between every two of them that could be a digit."""
    own = _group_ink(ink, labels, group)
    w = group.width
    k0 = max(2, round(w / (_ASPECT * height)))
    profile = ndimage.uniform_filter1d(own.sum(axis=0), size=max(1, int(height / 12)))
    minima = np.flatnonzero((profile[1:-1] <= profile[:-2]) & (profile[1:-1] < profile[2:])) + 1
    shares = {round(i * w / k) for k in range(k0, k0 + 2) for i in range(1, k)}
    cuts = _thin_out(
        sorted({*shares, *(int(c) for c in minima[np.argsort(profile[minima])][:_MAX_MINIMA])}), _CUT_MERGE * height, w
    )
    spans = [(a, b) for a in cuts for b in cuts if _PIECE_MIN * height <= b - a <= _PIECE_MAX * height]
    pieces = {span: _piece(own, span[0], span[1], group) for span in spans}
    return [[[c] for c in cuts]], {span: piece for span, piece in pieces.items() if piece is not None}


def _thin_out(cuts: list[int], spacing: float, width: int) -> list[int]:
    """0, the cuts at least ``spacing`` from the previous one kept and from the end, and ``width``."""
    kept = [0]
    for c in cuts:
        if c - kept[-1] >= spacing and width - c >= spacing:
            kept.append(c)
    return kept + [width]


def _width_penalty(relative_width: float) -> float:
    """0 up to MNIST's widest digits (1.05 of their height), growing beyond: a 1 may be as narrow as the pen."""
    return max(0.0, relative_width - 1.05) / 0.1


def _best_path(
    options: list[list[int]], score: dict[tuple[int, int], float]
) -> tuple[list[tuple[int, int]] | None, float]:
    """The chain of spans from the first cut to the last, through any of the cuts between, with the highest total
    score (dynamic programming over the cuts in order)."""
    cuts = [c for option in options for c in option]
    best: dict[int, tuple[float, list[tuple[int, int]]]] = {cuts[0]: (0.0, [])}
    for b in cuts[1:]:
        chains = [(best[a][0] + score[(a, b)], best[a][1] + [(a, b)]) for a in best if (a, b) in score]
        if chains:
            best[b] = max(chains, key=lambda c: c[0])
    if cuts[-1] not in best:
        return None, -np.inf
    value, path = best[cuts[-1]]
    return path, value
