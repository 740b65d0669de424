"""Preprocessing: pictures of any size, polarity, position and stroke width to MNIST-like 28x28; input validation."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from digits.serve import decode, preprocess
from digits.serve.model import MAX_BATCH
from digits.serve.preprocess import InputError, check_mnist_arrays, decode_image, stroke_width, to_mnist, to_mnist_batch
from tests.conftest import png_header, zero_size_png

pytestmark = pytest.mark.unit

# A "4" as strokes in a 100x100 design space: an open digit, asymmetric, so flips and crops would show.
FOUR = [[(60, 5), (10, 65), (85, 65)], [(60, 5), (60, 95)]]


def draw(size=(300, 300), offset=(0, 0), scale=2.0, width=24, ink=0, paper=255, mode="L") -> Image.Image:
    """The 4 drawn at ``scale`` x its design size, shifted by ``offset``, with ``width``-pixel strokes."""
    image = Image.new(mode, size, paper)
    pen = ImageDraw.Draw(image)
    for stroke in FOUR:
        points = [(offset[0] + x * scale, offset[1] + y * scale) for x, y in stroke]
        pen.line(points, fill=ink, width=width, joint="curve")
    return image


def encode(image: Image.Image, fmt: str = "PNG", **options) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return base64.b64encode(buffer.getvalue()).decode()


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two images, 1.0 for identical ones."""
    a, b = a.astype(float).ravel(), b.astype(float).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def mass_centre(image: np.ndarray) -> tuple[float, float]:
    w = image.astype(float)
    ys, xs = np.indices(w.shape)
    return float((ys * w).sum() / w.sum()), float((xs * w).sum() / w.sum())


def ink_box(image: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return to_mnist(draw())


# --- the MNIST recipe ------------------------------------------------------------------------------------------


def test_output_is_mnist_like(reference):
    assert reference.shape == (28, 28) and reference.dtype == np.uint8
    assert reference.max() == 255 and reference[0].max() == 0 and reference[:, 0].max() == 0  # light ink, black frame
    h, w = ink_box(reference)
    assert max(h, w) in (19, 20, 21) and max(h, w) <= 20 + 1  # long side fits MNIST's 20x20 box
    cy, cx = mass_centre(reference)
    assert abs(cy - 13.5) <= 0.75 and abs(cx - 13.5) <= 0.75  # centre of mass on the frame's centre


def test_polarity_is_detected(reference):
    light_on_dark = to_mnist(draw(ink=255, paper=0))
    assert similarity(light_on_dark, reference) > 0.99


def test_position_and_size_do_not_matter(reference):
    corner = to_mnist(draw(size=(900, 700), offset=(620, 430), scale=2.5, width=30))
    # A 3-pixel pen on a 30-pixel digit, MNIST's stroke width (a 2-pixel one, 0.07 of the digit, is thin but left as drawn).
    small = to_mnist(draw(size=(40, 40), offset=(4, 4), scale=0.32, width=3))
    assert similarity(corner, reference) > 0.95
    assert similarity(small, reference) > 0.9


def test_aspect_ratio_is_kept():
    # A "1": a tall thin bar stays tall and thin (not stretched to 20x20).
    one = Image.new("L", (200, 300), 255)
    ImageDraw.Draw(one).line([(100, 30), (100, 270)], fill=0, width=20)
    h, w = ink_box(to_mnist(one))
    assert h == 20 and w <= 5


def test_stroke_width_is_brought_into_mnists_range(reference):
    hairline = to_mnist(draw(size=(800, 800), scale=6, width=2))
    marker = to_mnist(draw(width=45))
    for image in (hairline, marker, reference):
        assert 2.0 <= stroke_width(image.astype(np.float32) / 255) <= 4.5
    assert similarity(hairline, reference) > 0.8
    assert similarity(marker, reference) > 0.85


def test_already_mnist_like_input_is_a_fixed_point(reference):
    again = to_mnist(reference)
    assert similarity(again, reference) > 0.97


def test_photo_of_ink_on_paper_with_uneven_light_and_jpeg_noise(reference):
    rng = np.random.default_rng(0)
    ink = np.asarray(draw(size=(640, 480), offset=(250, 120), scale=2.4, width=18), dtype=float) / 255
    light = np.linspace(120, 230, 640)[None, :] * np.linspace(0.8, 1.0, 480)[:, None]  # a shadow across the page
    photo = light * (0.25 + 0.75 * ink) + rng.normal(0, 6, ink.shape)
    rgb = Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).convert("RGB")
    result = to_mnist(encode(rgb, "JPEG", quality=70))
    assert similarity(result, reference) > 0.9


def test_a_bold_photographed_digit_keeps_its_filled_strokes():
    # A marker-bold ring (strokes 110 px wide) on paper lit from one side: the lighting is fitted to the paper, so
    # the ink the preprocessing finds is solid across every stroke (a grey-level opening took the inside of
    # strokes this wide for background: its ink fell to 0 in their middle).
    yy, xx = np.mgrid[0:400, 0:400]
    r = np.hypot(yy - 200, xx - 200)
    light = np.linspace(130, 230, 400)[None, :] + np.zeros((400, 1))
    photo = np.where((r > 40) & (r < 150), 50.0, light) + np.random.default_rng(0).normal(0, 4, r.shape)
    ink, scale = preprocess.ink_map(np.clip(photo, 0, 255).astype(np.uint8))
    assert scale == 1 and ink.shape == r.shape
    middle = ink[(r > 67) & (r < 123)]
    assert np.percentile(middle, 10) > 0.4, np.percentile(middle, 10)  # the opening's was 0.0
    assert ink[(r < 25) | (r > 175)].max() == 0  # the hole and the paper around stay paper


def test_transparent_canvas_strokes(reference):
    # Canvas apps export strokes on a transparent background whose colour is black.
    for colour in ((0, 0, 0), (255, 255, 255)):
        canvas = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
        strokes = draw(ink=255, paper=0)  # stroke mask
        canvas.paste(Image.new("RGBA", (300, 300), (*colour, 255)), mask=strokes)
        assert similarity(to_mnist(encode(canvas)), reference) > 0.98, colour


def test_arrays_and_pil_images_and_bytes_agree(reference):
    picture = draw()
    raw = base64.b64decode(encode(picture))
    rgb = np.stack([np.asarray(picture)] * 3, axis=-1)
    for variant in (
        picture,
        np.asarray(picture),
        rgb,
        raw,
        encode(picture),
        "data:image/png;base64," + encode(picture),
    ):
        np.testing.assert_array_equal(to_mnist(variant), reference)


def test_base64_wrapped_at_76_columns_is_accepted(reference):
    text = encode(draw())
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    np.testing.assert_array_equal(to_mnist(wrapped), reference)


# --- pictures that are not usable ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload, message",
    [
        ("not base64!", "not valid base64"),
        ("abcde", "not valid base64"),
        ("", "empty"),
        (base64.b64encode(b"hello, this is text").decode(), "not a PNG or JPEG"),
        (base64.b64encode(b"GIF89a" + bytes(40)).decode(), "not a PNG or JPEG"),
        (base64.b64encode(zero_size_png()).decode(), "0x0"),
        ("data:image/png,abc", "must be base64"),
    ],
)
def test_bad_pictures_are_rejected_with_one_line(payload, message):
    with pytest.raises(InputError, match=message) as info:
        to_mnist(payload)
    assert "\n" not in str(info.value)


def test_truncated_png_is_rejected():
    data = base64.b64decode(encode(draw()))
    with pytest.raises(InputError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_pixel_limit_is_checked_before_decoding(monkeypatch):
    monkeypatch.setattr(decode, "MAX_PIXELS", 100 * 100)
    with pytest.raises(InputError, match=r"101x100 = 10,100 pixels, over the limit of 10,000"):
        decode_image(base64.b64decode(encode(Image.new("L", (101, 100)))))
    assert decode_image(encode(Image.new("L", (100, 100)))).size == (100, 100)


def test_default_pixel_limit_takes_a_phone_photo_but_not_more():
    # Headers without pixel data: a 12-megapixel photo passes the size check and only then fails to decode; a
    # 25-megapixel one is refused by the size check itself. Both in microseconds, no big picture is made.
    with pytest.raises(InputError, match=r"^the PNG data is truncated or corrupt"):
        decode_image(png_header(4032, 3024))
    with pytest.raises(InputError, match=r"^the image is 5000x5000 = 25,000,000 pixels, over the limit of "):
        decode_image(png_header(5000, 5000))
    with pytest.raises(InputError, match=r"^the image is 5000x5000 = 25,000,000 pixels, over the limit of "):
        to_mnist(base64.b64encode(png_header(5000, 5000)).decode())  # the limit that preprocess applies


def test_a_phone_sized_jpeg_is_decoded_reduced(reference):
    photo = draw(size=(4032, 3024), offset=(1500, 900), scale=12, width=144).convert("RGB")
    data = base64.b64decode(encode(photo, "JPEG"))
    assert max(decode_image(data).size) <= 2 * 1024  # libjpeg decoded it at a reduced scale
    assert similarity(to_mnist(data), reference) > 0.95


def test_truncated_headers_are_named():
    for data in (base64.b64decode(encode(draw()))[:40], base64.b64decode(encode(draw().convert("RGB"), "JPEG"))[:40]):
        with pytest.raises(InputError, match="(PNG|JPEG) data is truncated or corrupt"):
            decode_image(data)


@pytest.mark.parametrize(
    "image", [Image.new("L", (64, 64), 255), Image.new("L", (64, 64), 0), Image.new("L", (64, 64), 120)]
)
def test_blank_pictures_have_no_digit(image):
    with pytest.raises(InputError, match="no digit found"):
        to_mnist(image)


def test_faint_noise_is_not_a_digit():
    rng = np.random.default_rng(1)
    noise = Image.fromarray(rng.integers(200, 215, (64, 64), dtype=np.uint8))
    with pytest.raises(InputError, match="no digit found"):
        to_mnist(noise)


# --- MNIST pixel values ----------------------------------------------------------------------------------------


@pytest.fixture
def pixels(reference) -> np.ndarray:
    return np.stack([reference, np.roll(reference, 1, axis=1)])


def test_pixel_values_pass_unchanged_in_both_layouts(pixels):
    np.testing.assert_array_equal(check_mnist_arrays(pixels.tolist()), pixels)
    np.testing.assert_array_equal(check_mnist_arrays(pixels.reshape(2, 784).tolist()), pixels)
    np.testing.assert_array_equal(check_mnist_arrays(np.clip(pixels - 0.3, 0, None)), pixels)  # fractions are rounded


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p[:, :27].tolist(), r"got shape \(27, 28\)"),
        (lambda p: p.reshape(2, 784)[:, :783].tolist(), r"got shape \(783,\)"),
        (lambda p: [["7"] * 784] * 2, "got strings"),
        (lambda p: [[True] * 784] * 2, "got booleans"),
        (lambda p: [[True] + p.reshape(2, 784)[0].tolist()[1:]], "booleans among them"),
        (lambda p: np.where(np.arange(784).reshape(28, 28) == 0, np.nan, p).tolist(), "NaN or infinity"),
        (lambda p: np.where(np.arange(784).reshape(28, 28) == 0, np.inf, p).tolist(), "NaN or infinity"),
        (lambda p: (p.astype(float) - 1).tolist(), "from 0 to 255, got -1 to 254"),
        (lambda p: (p.astype(float) * 2).tolist(), "from 0 to 255, got 0 to 510"),
        (lambda p: (p / 255).tolist(), "not 0-1"),
        (lambda p: (255 - p).tolist(), "light ink on a dark background"),
        (lambda p: [p[0].tolist(), p[1].tolist()[:-1]], "rectangular"),
        (lambda p: [], "empty batch"),
    ],
)
def test_bad_pixel_values_are_rejected(pixels, change, message):
    with pytest.raises(InputError, match=message):
        check_mnist_arrays(change(pixels))


# --- batches -------------------------------------------------------------------------------------------------------


def test_batch_mixes_pictures_and_pixel_values(reference):
    items = [encode(draw()), reference.tolist(), reference.reshape(784).tolist(), encode(draw(ink=255, paper=0))]
    batch = to_mnist_batch(items, MAX_BATCH)
    assert batch.shape == (4, 28, 28) and batch.dtype == np.uint8
    for image in batch:
        assert similarity(image, reference) > 0.99


@pytest.mark.parametrize(
    "items, message",
    [
        ([], "empty batch"),
        ([[]], "empty batch"),
        (["GOOD", None], "image 1: .*got nothing"),
        (["GOOD", 5], "image 1: .*got a number"),
        (["GOOD", True], "image 1: .*got a boolean"),
        (["GOOD", "GOOD", "%%%"], "image 2: the text is not valid base64"),
        (
            ["GOOD", "PIXELS", [[0] * 28] * 27],
            r"image 2: expected 28x28 or 784 pixel values per image, got shape \(27, 28\)",
        ),
        (["PIXELS", "PIXELS", "INVERTED"], "image 2: the border is light"),
    ],
)
def test_batch_errors_name_the_bad_item(reference, items, message):
    stand_ins = {"GOOD": encode(draw()), "PIXELS": reference.tolist(), "INVERTED": (255 - reference).tolist()}
    items = [stand_ins.get(i, i) if isinstance(i, str) else i for i in items]
    with pytest.raises(InputError, match=message):
        to_mnist_batch(items, MAX_BATCH)


def test_batch_limits(reference, monkeypatch):
    with pytest.raises(InputError, match="batch of 4 images is over the limit of 3"):
        to_mnist_batch([reference.tolist()] * 4, max_batch=3)
    assert to_mnist_batch([reference.tolist()] * 3, max_batch=3).shape == (3, 28, 28)
    monkeypatch.setattr(preprocess, "MAX_BATCH_PIXELS", 300 * 300 * 2)
    picture = encode(draw())
    assert len(to_mnist_batch([picture, picture], MAX_BATCH)) == 2
    with pytest.raises(InputError, match="image 2: the pictures of this request have more than 180,000 pixels"):
        to_mnist_batch([picture, picture, picture], MAX_BATCH)


def test_thicker_mnist_like_strokes_from_a_real_dilation(reference):
    # A dilated copy of a 28x28 digit (what a thick pen does) maps back near the original.
    big = Image.fromarray(reference).resize((280, 280), Image.Resampling.BILINEAR).filter(ImageFilter.MaxFilter(7))
    assert similarity(to_mnist(big), reference) > 0.85


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped():
    import io

    from digits.serve.decode import decode_image

    values = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue())
    assert decoded.mode == "L"
    np.testing.assert_array_equal(np.asarray(decoded), np.rint(values / 257).astype(np.uint8))


def test_a_huge_finite_pixel_value_is_named_not_called_infinity():
    values = np.zeros((2, 784))
    values[1, 5] = 1e300
    with pytest.raises(InputError, match=r"image 1: pixel values must be from 0 to 255, got 1e\+300"):
        to_mnist_batch(list(values), 10)
    values[1, 5] = np.inf
    with pytest.raises(InputError, match="NaN or infinity"):
        to_mnist_batch(list(values), 10)
