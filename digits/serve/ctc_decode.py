"""Decoding the line reader's frames in numpy: constrained Viterbi, forced alignment, the CTC forward algorithm.

Input: one strip's per-frame log-probabilities (T, 11), class 0 CTC's blank and class d + 1 digit d (what
``reader.ReaderNet`` emits). ``constrained_decode`` finds the most probable frame path whose reading the
constraint's automaton (``ctc_pattern``) accepts: a Viterbi over the product of the trellis (which class each frame
holds) and the automaton (which state the digits so far reached), so a length or pattern constraint changes the
search, not a filtered list. ``forced_align`` gives the frames a known string's digits were emitted on;
``log_likelihoods`` the CTC probability of strings (summed over all their paths), batched, which is what the
digit confidences (every substitution at every position scored) and the string's exp(-CTC loss) come from.
No torch: the ONNX served model decodes with this.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from digits.serve.ctc_boxes import digit_boxes
from digits.serve.ctc_pattern import Automaton, ConstraintError, compile_constraint

__all__ = [
    "Decoded",
    "NumberReading",
    "constrained_decode",
    "digit_confidences",
    "forced_align",
    "log_likelihoods",
    "read_frames",
    "tempered",
]

BLANK = 0  # as reader.BLANK (reader imports torch; this module must not)
NEG = -np.inf


@dataclass(frozen=True)
class Decoded:
    """A reading: its digits, each digit's emitting frames (first, last), and the log-probability of its best path."""

    text: str
    spans: tuple[tuple[int, int], ...]
    log_path: float


def _frames(log_probs: np.ndarray) -> np.ndarray:
    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[1] != 11:
        raise ValueError(f"expected one strip's log-probabilities (T, 11), got shape {lp.shape}")
    return lp


def tempered(log_probs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """log_softmax(log_probs / temperature) over the classes: the same as dividing the logits (the per-frame
    normaliser is a constant that the new softmax removes)."""
    z = np.asarray(log_probs, dtype=np.float64)
    if temperature != 1.0:
        z = z / temperature
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class _Product:
    """The trellis x automaton states: state n is (automaton state ``q[n]``, frame class ``cls[n]``); ``pred[n]``
    lists the states a frame in n may follow (padded with ``len(q)``, a slot that holds -inf)."""

    q: np.ndarray
    cls: np.ndarray
    pred: np.ndarray
    start: int  # (automaton start, blank): where the path stands before its first frame
    final: np.ndarray  # states whose automaton state accepts


@functools.lru_cache(maxsize=128)
def _product(automaton: Automaton) -> _Product:
    delta = automaton.delta
    n_q = len(automaton.accept)
    entered = [{BLANK} | {d + 1 for d in range(10) for p in range(n_q) if delta[p, d] == q} for q in range(n_q)]
    states = [(q, c) for q in range(n_q) for c in sorted(entered[q])]
    index = {s: i for i, s in enumerate(states)}
    preds = []
    for q, c in states:
        if c == BLANK:  # a blank frame: after anything in the same automaton state
            preds.append([index[(q, k)] for k in sorted(entered[q])])
            continue
        # the same digit held on (no new emission), or a new emission of digit c - 1 from a state that moves to q;
        # the new one cannot follow a frame of the same class (that would be the held digit): CTC's repeat rule
        new = [index[(p, k)] for p in range(n_q) if delta[p, c - 1] == q for k in sorted(entered[p]) if k != c]
        preds.append([index[(q, c)], *new])
    width = max(len(p) for p in preds)
    pred = np.full((len(states), width), len(states), np.int64)
    for i, p in enumerate(preds):
        pred[i, : len(p)] = p
    q_of = np.array([s[0] for s in states])
    return _Product(
        q=q_of,
        cls=np.array([s[1] for s in states]),
        pred=pred,
        start=index[(automaton.start, BLANK)],
        final=np.flatnonzero(automaton.accept[q_of]),
    )


def constrained_decode(log_probs: np.ndarray, automaton: Automaton | None = None) -> Decoded:
    """The most probable frame path of ``log_probs`` (T, 11) whose reading ``automaton`` accepts (None: any).

    Raises ``ConstraintError`` when no path fits (too few frames for the digits the constraint asks for).
    """
    lp = _frames(log_probs)
    prod = _product(automaton if automaton is not None else compile_constraint())
    n, t_max = len(prod.q), len(lp)
    score = np.full(n + 1, NEG)
    score[prod.start] = 0.0
    back = np.empty((t_max, n), np.int64)
    rows = np.arange(n)
    for t in range(t_max):
        cand = score[prod.pred]
        k = cand.argmax(axis=1)
        back[t] = prod.pred[rows, k]
        score[:n] = cand[rows, k] + lp[t, prod.cls]
    best = prod.final[np.argmax(score[prod.final])]
    if not np.isfinite(score[best]):
        raise ConstraintError("no reading of this picture fits the constraint (too narrow for that many digits)")
    path = np.empty(t_max, np.int64)
    state = best
    for t in range(t_max - 1, -1, -1):
        path[t] = state
        state = back[t, state]
    return _reading(path, prod.cls, float(score[best]))


def _reading(path: np.ndarray, cls: np.ndarray, log_path: float) -> Decoded:
    """Text and spans of a product-state path: a digit starts where the state changes to a digit state."""
    classes = cls[path]
    starts = np.flatnonzero((classes != BLANK) & np.concatenate([[True], path[1:] != path[:-1]]))
    spans = []
    for s in starts:
        e = s
        while e + 1 < len(path) and path[e + 1] == path[s]:
            e += 1
        spans.append((int(s), int(e)))
    return Decoded("".join(str(int(classes[s]) - 1) for s in starts), tuple(spans), log_path)


def _extended(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CTC's extended labels (blank, l1, blank, ..., lL, blank) per row, and where a state may skip the one before
    (a digit after a blank, unless the digit before it is the same)."""
    b, length = labels.shape
    ext = np.zeros((b, 2 * length + 1), np.int64)
    ext[:, 1::2] = labels + 1
    skip = np.zeros(ext.shape, bool)
    skip[:, 3::2] = ext[:, 3::2] != ext[:, 1:-2:2]
    return ext, skip


def forced_align(log_probs: np.ndarray, text: str) -> tuple[tuple[int, int], ...]:
    """Each digit of ``text``'s emitting frames (first, last) on the most probable path that reads ``text``."""
    lp = _frames(log_probs)
    if not text:
        return ()
    if len(lp) == 0:
        raise ConstraintError(f"{len(text)} digits need more frames than the strip has (0)")
    ext, skip = _extended(np.array([[int(c) for c in text]]))
    ext, skip = ext[0], skip[0]
    s_max, t_max = len(ext), len(lp)
    score = np.full(s_max, NEG)
    score[:2] = lp[0, ext[:2]]
    back = np.zeros((t_max, s_max), np.int64)  # 0: stayed, 1: from s - 1, 2: from s - 2
    for t in range(1, t_max):
        moves = np.full((3, s_max), NEG)
        moves[0] = score
        moves[1, 1:] = score[:-1]
        moves[2, 2:] = np.where(skip[2:], score[:-2], NEG)
        back[t] = moves.argmax(axis=0)
        score = moves[back[t], np.arange(s_max)] + lp[t, ext]
    state = s_max - 1 if score[-1] >= score[-2] else s_max - 2
    if not np.isfinite(score[state]):
        raise ConstraintError(f"{len(text)} digits need more frames than the strip has ({t_max})")
    states = np.empty(t_max, np.int64)
    for t in range(t_max - 1, -1, -1):
        states[t] = state
        state -= back[t, state]
    return tuple((int(f[0]), int(f[-1])) for f in (np.flatnonzero(states == 2 * i + 1) for i in range(len(text))))


def log_likelihoods(log_probs: np.ndarray, labels: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """log p(label | frames) summed over all CTC paths (-CTC loss), for a batch of labels of one length: (B,).

    The forward algorithm in probability space, rescaled every frame (Graves 2006): the same sums as log-sum-exp,
    with a few multiplications per frame instead of logarithms. -inf where the label cannot fit the frames.
    """
    lp = _frames(log_probs)
    labels = np.asarray(labels, dtype=np.int64).reshape(len(labels), -1)
    if len(lp) == 0:  # no frames: only the empty reading, with certainty
        return np.where(labels.shape[1] == 0, 0.0, NEG) * np.ones(len(labels))
    top = lp.max(axis=1)
    y = np.exp(lp - top[:, None])  # every frame's best class at 1: no underflow inside a frame
    ext, skip = _extended(labels)
    emit = y[:, ext]  # (T, B, S)
    alpha = np.zeros(ext.shape)
    alpha[:, :2] = emit[0, :, :2]
    log_scale = np.zeros(len(labels))
    skip_from = skip[:, 2:]
    for t in range(len(lp)):
        if t:
            nxt = alpha.copy()
            nxt[:, 1:] += alpha[:, :-1]
            nxt[:, 2:] += alpha[:, :-2] * skip_from
            alpha = nxt * emit[t]
        total = alpha.sum(axis=1)
        total[total == 0] = 1.0  # an impossible label stays at zero
        alpha /= total[:, None]
        log_scale += np.log(total)
    end = alpha[:, -1] + (alpha[:, -2] if ext.shape[1] > 1 else 0.0)
    with np.errstate(divide="ignore"):
        return np.log(end) + log_scale + top.sum()


def digit_confidences(log_probs: np.ndarray, text: str) -> tuple[np.ndarray, float]:
    """Each digit's posterior against its nine substitutes (the rest of the string held), and log p(text).

    All 10 x L strings are scored in one batched forward pass; p(text) is exp(-CTC loss) of the reading.
    """
    if not text:
        return np.zeros(0), float(log_likelihoods(log_probs, np.zeros((1, 0), np.int64))[0])
    digits = np.array([int(c) for c in text])
    length = len(digits)
    variants = np.repeat(digits[None], 10 * length, axis=0).reshape(length, 10, length)
    variants[np.arange(length), :, np.arange(length)] = np.arange(10)
    scores = log_likelihoods(log_probs, variants.reshape(-1, length)).reshape(length, 10)
    mine = scores[np.arange(length), digits]
    top = scores.max(axis=1, keepdims=True)
    posterior = np.exp(mine - top[:, 0]) / np.exp(scores - top).sum(axis=1)
    return posterior, float(mine[0])


@dataclass(frozen=True)
class NumberReading:
    """A strip read under a constraint: text, each digit's box on the strip (x0, y0, x1, y1) and confidence, and
    the whole string's probability (exp(-CTC loss) at the fitted temperature)."""

    text: str
    boxes: tuple[tuple[int, int, int, int], ...]
    digit_confidences: tuple[float, ...]
    confidence: float


def read_frames(
    log_probs: np.ndarray,
    ink: np.ndarray,
    length: object = None,
    pattern: object = None,
    temperature: float = 1.0,
    offset: float = 0.0,
) -> NumberReading:
    """Everything the served reader answers for one strip: ``log_probs`` (T, 11) the reader's frames for ``ink``
    (the strip, (HEIGHT, W)), held to ``length`` digits and/or ``pattern`` (``ConstraintError`` if malformed);
    ``temperature`` and ``offset`` (pixels from an emission to its digit's centre) as fitted on validation strips."""
    automaton = compile_constraint(length=length, pattern=pattern)
    lp = tempered(log_probs, temperature)
    decoded = constrained_decode(lp, automaton)
    posterior, log_p = digit_confidences(lp, decoded.text)
    boxes = digit_boxes(ink, decoded.spans, offset=offset)
    return NumberReading(decoded.text, tuple(boxes), tuple(float(p) for p in posterior), float(np.exp(log_p)))
