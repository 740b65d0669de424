"""Decoding the line reader's frames (issue 30): constraints, alignment, boxes, confidences, calibration; numpy."""

import itertools
import math
import re
from collections import defaultdict

import numpy as np
import pytest

from digits.serve.ctc_boxes import STRIDE, digit_boxes
from digits.serve.ctc_calibrate import expected_calibration_error, fit_temperature, string_nll
from digits.serve.ctc_decode import (
    BLANK,
    constrained_decode,
    digit_confidences,
    forced_align,
    log_likelihoods,
    read_frames,
    tempered,
)
from digits.serve.ctc_pattern import ConstraintError, compile_constraint
from digits.serve.decode import InputError

pytestmark = pytest.mark.unit


def trellis(frames) -> np.ndarray:
    """Log-probabilities (T, 11) from frames given as a digit (0.97 on it), "-" (0.97 on blank) or {class: p}
    (class "-" the blank); what is left of each frame is spread over the other classes."""
    rows = []
    for f in frames:
        chosen = {"-": 0.97} if f == "-" else ({f: 0.97} if isinstance(f, int) else dict(f))
        row = np.zeros(11)
        for k, p in chosen.items():
            row[BLANK if k == "-" else k + 1] = p
        rest = row == 0
        row[rest] = (1 - row.sum()) / rest.sum()
        rows.append(row)
    return np.log(np.array(rows))


def collapse(path) -> str:
    out, prev = [], None
    for c in path:
        if c != BLANK and c != prev:
            out.append(str(c - 1))
        prev = c
    return "".join(out)


def brute_force(lp: np.ndarray) -> tuple[dict, dict]:
    """Every path of a tiny trellis: each string's total probability and its best path's log-probability."""
    total, best = defaultdict(float), defaultdict(lambda: -np.inf)
    for path in itertools.product(range(11), repeat=len(lp)):
        score = lp[np.arange(len(lp)), list(path)].sum()
        text = collapse(path)
        total[text] += math.exp(score)
        best[text] = max(best[text], score)
    return total, best


def random_lp(t: int, seed: int, scale: float = 2.0) -> np.ndarray:
    return tempered(np.random.default_rng(seed).normal(size=(t, 11)) * scale)


# --- the forward algorithm and the constrained Viterbi against enumeration of every path ------------------------


def test_forward_probability_matches_brute_force_enumeration_over_all_paths():
    lp = random_lp(4, seed=1)
    total, _ = brute_force(lp)
    assert sum(total.values()) == pytest.approx(1.0)
    for text in ["", "3", "00", "12", "121", "1234", "111", "11111"]:
        p = math.exp(log_likelihoods(lp, [[int(c) for c in text]])[0])
        assert p == pytest.approx(total.get(text, 0.0), rel=1e-9, abs=1e-15), text
    # "111" needs two blanks between its repeats: 5 frames; on 4 frames it is impossible, not merely unlikely
    assert log_likelihoods(lp, [[1, 1, 1]])[0] == -np.inf


def test_constrained_viterbi_finds_the_best_path_the_constraint_allows():
    lp = random_lp(5, seed=2, scale=3.0)
    _, best = brute_force(lp)
    for constraint in [{}, {"length": 3}, {"pattern": r"[0-4]1?\d"}, {"length": 2, "pattern": r"[5-9]+"}]:
        automaton = compile_constraint(**constraint)
        allowed = {t: s for t, s in best.items() if automaton.matches(t)}
        text = max(allowed, key=allowed.get)
        decoded = constrained_decode(lp, automaton)
        assert decoded.log_path == pytest.approx(allowed[text]), constraint
        assert automaton.matches(decoded.text)
        assert allowed[decoded.text] == pytest.approx(allowed[text])


# --- constraints change the reading where they should ------------------------------------------------------------

# "12345" with a faint 3: its frame is blank at 0.55, so the best path reads 1245
FAINT_THREE = [1, 1, "-", 2, 2, "-", {"-": 0.55, 3: 0.44}, "-", 4, 4, "-", 5, 5]


def test_the_greedy_path_drops_a_faint_digit_and_length_five_restores_it():
    lp = trellis(FAINT_THREE)
    assert constrained_decode(lp).text == "1245"
    assert collapse(lp.argmax(axis=1)) == "1245"  # the same as greedy decoding
    held = constrained_decode(lp, compile_constraint(length=5))
    assert held.text == "12345"
    assert held.spans == ((0, 1), (3, 4), (6, 6), (8, 9), (11, 12))
    assert read_frames(lp, np.zeros((32, 4 * len(FAINT_THREE))), length="5").text == "12345"


def test_a_pattern_changes_the_reading_and_alternation_picks_a_length():
    # first digit: 1 at 0.6, 7 at 0.38; a pattern that forbids a leading 1 reads the 7
    lp = trellis([{1: 0.6, 7: 0.38}, "-", 4, "-", 2])
    assert constrained_decode(lp).text == "142"
    assert constrained_decode(lp, compile_constraint(pattern=r"[2-9]\d{2}")).text == "742"
    assert constrained_decode(lp, compile_constraint(pattern=r"^(1|7)4?2$")).text == "142"
    assert constrained_decode(trellis(FAINT_THREE), compile_constraint(pattern=r"\d{3}|\d{5}")).text == "12345"
    # 1245 is not allowed, and 12345 beats every 3-digit reading (three digits dropped)
    assert constrained_decode(trellis(FAINT_THREE), compile_constraint(pattern=r"\d{1,3}")).text in {
        "124",
        "125",
        "245",
        "145",
    }


@pytest.mark.parametrize(
    "pattern",
    [r"\d{5}", r"[0-5]?\d{2}", r"^(12|3+)4*$", r"[^3]{2,4}", r"(?:0|[1-9]\d*)", r"\d{3}|\d{5}", r"(1[0-2]|[1-9])0+"],
)
def test_the_compiled_automaton_agrees_with_python_re(pattern):
    automaton = compile_constraint(pattern=pattern)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        text = "".join(rng.choice(list("0123449"), size=rng.integers(0, 8)))
        assert automaton.matches(text) == bool(re.fullmatch(pattern.strip("^$"), text)), text


@pytest.mark.parametrize(
    "constraint",
    [
        {"length": 0},
        {"length": 13},
        {"length": "five"},
        {"length": True},
        {"length": -3},
        {"pattern": "[a-z]{3}"},
        {"pattern": r"\w+"},
        {"pattern": r"\d+\.\d{2}"},
        {"pattern": "12-34"},
        {"pattern": "(12"},
        {"pattern": "12)"},
        {"pattern": "*1"},
        {"pattern": r"\d{3,2}"},
        {"pattern": r"\d{2"},
        {"pattern": r"\d{40}"},
        {"pattern": "[5-3]"},
        {"pattern": ""},
        {"pattern": "1" * 101},
        {"pattern": ["1"]},
        {"pattern": r"(\d{0})"},
        {"pattern": r"((((\d{12}){12}){12}){12}){12}"},
        {"length": 2, "pattern": r"\d{3}"},
    ],
)
def test_malformed_constraints_are_refused_with_one_line(constraint):
    with pytest.raises(ConstraintError) as info:
        compile_constraint(**constraint)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, InputError)  # the serving layer's 400
    assert message and "\n" not in message and len(message) < 200


def test_a_constraint_that_needs_more_frames_than_the_strip_has_is_refused():
    with pytest.raises(ConstraintError, match="no reading"):
        constrained_decode(trellis([1, "-", 2]), compile_constraint(length=5))
    with pytest.raises(ConstraintError):
        forced_align(trellis([1, 1]), "11")  # a repeat needs a blank frame between


# --- repeats and alignment -----------------------------------------------------------------------------------------


def test_repeated_digits_decode_and_align_with_a_blank_between():
    lp = trellis([0, 0, "-", 0, "-", 1, "-", 1, 1, {"-": 0.5, 1: 0.48}, 1])
    decoded = constrained_decode(lp)
    assert decoded.text == "00111"
    assert decoded.spans == ((0, 1), (3, 3), (5, 5), (7, 8), (10, 10))
    assert forced_align(lp, "00111") == decoded.spans
    # a held 0 whose middle frame is nearly blank: read "0"; held to two digits, the blank splits them
    lp = trellis([0, {0: 0.5, "-": 0.48}, 0])
    assert constrained_decode(lp).text == "0"
    held = constrained_decode(lp, compile_constraint(length=2))
    assert held.text == "00" and held.spans[0][1] + 1 < held.spans[1][0]


def test_forced_alignment_is_the_best_path_of_the_given_string():
    lp = random_lp(5, seed=3, scale=3.0)
    _, best = brute_force(lp)
    for text in ["12", "00", "303"]:
        spans = forced_align(lp, text)
        assert len(spans) == len(text)
        assert all(a <= b < c for (a, b), (c, _) in zip(spans, spans[1:]))
        # the aligned path scores what the best path of the string scores
        path = np.full(len(lp), BLANK)
        for digit, (a, b) in zip(text, spans):
            path[a : b + 1] = int(digit) + 1
        assert collapse(path) == text
        assert lp[np.arange(len(lp)), path].sum() == pytest.approx(best[text])


# --- confidences and calibration -----------------------------------------------------------------------------------


def test_digit_confidences_score_the_substitutions_and_the_string_its_ctc_probability():
    lp = trellis([3, "-", {5: 0.6, 6: 0.38}, "-", 8])
    posterior, log_p = digit_confidences(lp, "358")
    assert posterior[0] > 0.95 and posterior[2] > 0.95  # each other digit keeps a 0.003 share
    assert posterior[1] == pytest.approx(0.6 / 0.98, abs=0.02)
    assert log_p == pytest.approx(log_likelihoods(lp, [[3, 5, 8]])[0])
    reading = read_frames(lp, np.zeros((32, 20)))
    assert reading.text == "358" and reading.confidence == pytest.approx(math.exp(log_p))
    cooler = read_frames(lp, np.zeros((32, 20)), temperature=2.0)
    assert cooler.text == "358" and cooler.confidence < reading.confidence


def test_the_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    for true_t in (0.5, 2.0):
        samples = []
        for _ in range(250):
            logits = rng.normal(size=(8, 11)) * 2
            p = np.exp(tempered(logits, true_t))
            path = [rng.choice(11, p=row) for row in p]
            samples.append((tempered(logits), collapse(path)))
        fitted = fit_temperature(samples)
        assert fitted == pytest.approx(true_t, rel=0.15)
        assert string_nll(samples, fitted) <= min(string_nll(samples, true_t), string_nll(samples, 1.0)) + 1e-9


def test_expected_calibration_error():
    assert expected_calibration_error([0.9] * 10, [True] * 6 + [False] * 4) == pytest.approx(0.3)
    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 20000)
    assert expected_calibration_error(conf, rng.uniform(0, 1, conf.size) < conf) < 0.02
    assert expected_calibration_error([], []) == 0.0


# --- boxes ----------------------------------------------------------------------------------------------------------


def _strip_with_blocks():
    """A 32 x 120 strip with four ink blocks (digits 5, 0, 0, 7): the 0s touch through a thin neck, the second 0
    is shorter, and the 7's bar reaches back over the gap above it (without touching it), past where the cut
    between them falls; frames emit each digit at its block's middle."""
    ink = np.zeros((32, 120), np.uint8)
    blocks = [(8, 24, 4), (36, 54, 4), (56, 74, 8), (92, 110, 4)]  # columns [x0, x1), top row; all end at row 28
    for x0, x1, top in blocks:
        ink[top:28, x0:x1] = 255
    ink[15:17, 54:56] = 255  # the neck between the two 0s
    ink[4:6, 68:110] = 255  # the 7's bar
    frames = ["-"] * 30
    for digit, (x0, x1, _) in zip([5, 0, 0, 7], blocks):
        mid = (x0 + x1) // 2 // STRIDE
        frames[mid - 1 : mid + 1] = [digit, digit]
    return ink, trellis(frames), blocks


def test_boxes_cover_the_right_digits_on_a_hand_made_strip():
    ink, lp, blocks = _strip_with_blocks()
    reading = read_frames(lp, ink, length=4)
    assert reading.text == "5007"
    assert len(reading.boxes) == 4
    for (x0, y0, x1, y1), (b0, b1, top) in zip(reading.boxes[:3], blocks):
        assert (y0, y1) == (top, 28)
        assert abs((x0 + x1) / 2 - (b0 + b1) / 2) < (b1 - b0) / 4
        assert x0 <= b0 + 1 and x1 >= b1 - 1  # the whole block, at most a neck column cut off
    assert reading.boxes[1][2] <= reading.boxes[2][0] + 1  # the touching 0s are split at their neck
    # the bar crosses the cut between the second 0 and the 7 but belongs to the 7 whole; the 0 keeps none of it
    assert reading.boxes[3] == (68, 4, 110, 28)
    assert reading.boxes[2][1:] == (8, 74, 28) and 54 <= reading.boxes[2][0] <= 56


def test_a_digit_without_ink_of_its_own_gets_its_emission_columns():
    ink = np.zeros((32, 40), np.uint8)
    ink[4:28, 4:14] = 255
    boxes = digit_boxes(ink, [(1, 2), (7, 8)])
    assert boxes[0] == (4, 4, 14, 28)
    assert boxes[1] == (28, 4, 36, 28)
    assert digit_boxes(ink, []) == []


def test_the_decoder_shares_the_readers_frame_geometry():
    from digits.serve import reader

    assert (STRIDE, BLANK) == (reader.STRIDE, reader.BLANK)


def test_a_strip_without_frames_reads_empty_and_a_wrong_shape_is_refused():
    empty = np.zeros((0, 11))
    assert constrained_decode(empty).text == ""
    assert read_frames(empty, np.zeros((32, 0))).confidence == 1.0
    with pytest.raises(ConstraintError):
        read_frames(empty, np.zeros((32, 0)), length=1)
    assert log_likelihoods(empty, [[3]])[0] == -np.inf
    with pytest.raises(ValueError, match=r"\(T, 11\)"):
        constrained_decode(np.zeros((2, 5, 11)))


def test_slanted_digits_that_overlap_in_x_are_cut_along_a_path_between_them():
    # two parallel strokes leaning right, 7 px apart in every row, joined by a one-pixel bridge: one piece of ink
    # that no vertical line separates
    ink = np.zeros((32, 40), np.uint8)
    for r in range(4, 28):
        x = 10 + (r - 4) * 10 // 23
        ink[r, x : x + 2] = 255  # digit 1's stroke
        ink[r, x + 7 : x + 9] = 255  # digit 2's stroke
    ink[16, 17:22] = 255
    boxes = digit_boxes(ink, [(3, 3), (5, 5)])  # emitted at x = 14 and x = 22
    assert boxes == [(10, 4, 22, 28), (17, 4, 29, 28)]  # each stroke whole; a vertical cut would clip both
