"""The served line reader's path (issue 30): pictures to strips and back, constraints and refusals, the promotion
rule on digits and numbers, the request params; with a frame function made by hand, so every answer is known."""

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from digits.mlops.promotion import decide
from digits.serve.answers import answer
from digits.serve.contract import constraint_problem
from digits.serve.decode import InputError
from digits.serve.guard import _Refused, parse_request
from digits.serve.line_reader import LineReader, read_lines
from digits.serve.strip import HEIGHT, STRIDE, place

pytestmark = pytest.mark.unit


def blocks_picture(xs, width=600, height=160, top=40, bottom=120, block=30) -> np.ndarray:
    """Dark blocks (one per x) on white paper: each block stands for one digit."""
    picture = np.full((height, width), 255, np.uint8)
    for x in xs:
        picture[top:bottom, x : x + block] = 0
    return picture


def frames_from_ink(digits: str, weak: dict[int, float] | None = None):
    """A frame function that emits ``digits[i]`` on the frames over the i-th run of ink columns, blank elsewhere.

    ``weak``: {i: p} gives digit i only probability p against the blank (below 0.5 a free reading drops it).
    """
    weak = weak or {}

    def frames(strips: np.ndarray) -> np.ndarray:
        n, _, _, width = strips.shape
        out = np.full((n, width // STRIDE, 11), 1e-4, np.float32)
        out[:, :, 0] = 1.0
        for k in range(n):
            ink = strips[k, 0].max(axis=0) > 0.5
            columns = ink.reshape(-1, STRIDE).any(axis=1)
            edges = np.flatnonzero(np.diff(np.concatenate([[0], columns.astype(int), [0]])))
            for i, (a, b) in enumerate(zip(edges[::2], edges[1::2])):
                p = weak.get(i, 0.99)
                out[k, a:b, 0] = 1 - p
                out[k, a:b, int(digits[i]) + 1] = p
        out /= out.sum(axis=2, keepdims=True)
        return np.log(out)

    return frames


def test_boxes_come_back_in_the_pictures_pixels_over_the_right_digits():
    xs = [50, 200, 420]
    reading = read_lines([blocks_picture(xs)], LineReader(frames_from_ink("371")))[0]
    assert reading.text == "371"
    for x, digit in zip(xs, reading.digits):
        x0, y0, x1, y1 = digit.box
        assert abs(x0 - x) <= 3 and abs(x1 - (x + 30)) <= 3, (x, digit.box)
        assert abs(y0 - 40) <= 3 and abs(y1 - 120) <= 3, digit.box
        assert 0.9 < digit.confidence <= 1
    assert 0.5 < reading.confidence <= 1


def test_a_strip_is_the_reader_s_height_and_maps_back_exactly():
    strip, where = place(blocks_picture([100, 300]) < 128)
    assert strip.shape[0] == HEIGHT and strip.dtype == np.uint8
    box = where.to_picture((where.fx * 0 + 4, 2, 4 + where.fx * 230, 30))  # the whole ink on the strip
    assert box == (100, 40, 330, 120)


def test_a_length_changes_the_reading_where_the_free_one_drops_a_doubtful_digit():
    reader = LineReader(frames_from_ink("375", weak={2: 0.3}))
    picture = blocks_picture([50, 200, 420])
    assert read_lines([picture], reader)[0].text == "37"
    assert read_lines([picture], reader, length=3)[0].text == "375"
    assert read_lines([picture], reader, pattern=r"\d\d5")[0].text == "375"
    assert read_lines([picture], reader, pattern="37|99")[0].text == "37"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"length": 13}, "length must be from 1 to 12"),
        ({"length": "five"}, "length must be a whole number"),
        ({"pattern": "(12"}, "pattern"),
        ({"pattern": "[a-z]+"}, "pattern"),
    ],
)
def test_malformed_constraints_are_refused_in_one_line(kwargs, message):
    with pytest.raises(InputError, match=message) as info:
        read_lines([blocks_picture([50])], LineReader(frames_from_ink("1")), **kwargs)
    assert "\n" not in str(info.value)


def test_a_blank_picture_and_more_than_twelve_digits_are_refused_naming_the_picture():
    reader = LineReader(frames_from_ink("1234567890123"))
    with pytest.raises(InputError, match=r"^image 1: no digit found: the image is blank"):
        read_lines([blocks_picture([50]), np.full((80, 200), 255, np.uint8)], reader)
    many = blocks_picture([20 + 45 * i for i in range(13)], width=640, block=25)
    with pytest.raises(InputError, match=r"^image 0: read 13 digits, more than the 12 a number may have$"):
        read_lines([many], reader)


def test_the_answer_takes_length_and_pattern_in_mode_number_only_and_only_with_a_reader():
    proba = lambda images: np.full((len(images), 10), 0.1)  # noqa: E731
    frame = pd.DataFrame({"image": [blocks_picture([50, 200, 420])]})
    reader = LineReader(frames_from_ink("375", weak={2: 0.3}))
    got = answer(frame, proba, {"mode": "number", "length": 3, "pattern": ""}, reader)
    assert got["text"].tolist() == ["375"] and list(got.columns) == ["text", "confidence", "digits"]
    assert answer(frame, proba, {"mode": "number", "length": 0, "pattern": ""}, reader)["text"].tolist() == ["37"]
    for params, message in [
        ({"mode": "digit", "length": 3}, "apply to the mode 'number' only"),
        ({"mode": "number", "length": 3}, None),  # no reader: cutting takes no constraint
        ({"mode": "number", "length": -1}, "must be a whole number from 1 to 12"),
        ({"mode": "number", "pattern": "x"}, "pattern"),
    ]:
        with pytest.raises(MlflowException, match=message or "reads numbers by cutting") as info:
            answer(frame, proba, params, None if message is None else reader)
        assert "\n" not in str(info.value.message)


def test_the_guard_refuses_ill_typed_constraints_before_mlflow_parses_them():
    body = {"dataframe_split": {"columns": ["image"], "data": [[[0] * 784]]}}
    for params, message in [
        ({"length": "5"}, "'length' must be a whole number"),
        ({"length": True}, "'length' must be a whole number"),
        ({"pattern": 5}, "'pattern' must be a regular expression"),
        ({"pattern": "1" * 101}, "at most 100 characters"),
    ]:
        with pytest.raises(_Refused) as info:
            parse_request({**body, "params": params})
        assert info.value.status == 400 and message in str(info.value)
    assert parse_request({**body, "params": {"mode": "number", "length": 5, "pattern": r"\d+"}})
    assert constraint_problem(None, None) is None and constraint_problem(12, "") is None


@pytest.mark.parametrize(
    ("accuracy", "numbers", "champion", "promoted", "said"),
    [
        (0.99, 0.9, None, True, "first champion"),
        (0.99, 0.9, {"test_accuracy": "0.98", "test_number_exact_match": "0.8"}, True, "now champion"),
        (0.99, 0.7, {"test_accuracy": "0.98", "test_number_exact_match": "0.8"}, False, "loses on numbers"),
        (0.97, 0.9, {"test_accuracy": "0.98", "test_number_exact_match": "0.8"}, False, "does not beat"),
        (0.99, None, {"test_accuracy": "0.98", "test_number_exact_match": "0.8"}, False, "loses on numbers"),
        (0.99, 0.9, {"test_accuracy": "0.98"}, True, "compared on digits"),
        (0.99, 0.9, {}, False, "no test_accuracy tag"),
    ],
)
def test_the_promotion_rule_looks_at_digits_and_numbers(accuracy, numbers, champion, promoted, said):
    got, reason = decide(7, accuracy, numbers, None if champion is None else ("3", champion))
    assert got is promoted and said in reason and "version 7" in reason


def test_the_emission_offset_is_fitted_from_strips_whose_digits_are_known():
    from digits.evaluate.reader_test import fit_emission_offset
    from digits.learn.strips import Strips

    strip = np.zeros((HEIGHT, 96), np.uint8)
    strip[4:28, 16:36] = 255
    strip[4:28, 56:76] = 255
    frames = frames_from_ink("12")(strip[None, None].astype(np.float32) / 255)[0]
    late = np.roll(frames, -1, axis=0)  # a reader that emits every digit one frame (4 px) left of its ink
    strips = Strips([strip], ["12"], [np.array([[16.0, 36.0], [56.0, 76.0]])], [np.zeros(1)], ["ink"])
    assert fit_emission_offset([frames], strips, 1.0) == pytest.approx(0.0, abs=2.0)
    assert fit_emission_offset([late], strips, 1.0) == pytest.approx(4.0, abs=2.0)
