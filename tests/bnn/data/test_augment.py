import io

import numpy as np
import pytest

from bnn.data import augment as A


@pytest.mark.parametrize(
    "spec, expected",
    [
        (None, A.Augment()),
        ("none", A.Augment()),
        ("flip", A.Augment(flip=True)),
        ("shift", A.Augment(shift=0.15)),
        ("shift(0.15)+flip", A.Augment(shift=0.15, flip=True)),
        (" shift(0.1, fill=zero) + flip ", A.Augment(shift=0.1, fill="zero", flip=True)),
        ("inception_crop+flip", A.Augment(inception_crop=True, flip=True)),
    ],
)
def test_parse(spec, expected):
    assert A.parse_augment(spec) == expected


@pytest.mark.parametrize(
    "spec, message",
    [
        ("rotate", "unknown augmentation 'rotate'"),
        ("shift(1.5)", "must be in"),
        ("shift(0.1, fill=wrap)", "shift fill 'wrap'"),
        ("shift(0.1, mode=edge)", "bad arguments"),
        ("flip(0.5)", "takes no arguments"),
        ("flip+flip", "given twice"),
        ("shift(0.1", "bad augmentation"),
    ],
)
def test_parse_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        A.parse_augment(spec)


def _images(b=16, h=32, w=32, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(b, h, w, c), dtype=np.uint8)


def _translate(image, dy, dx, fill):
    """Reference: output (i, j) = input (i - dy, j - dx), outside filled by edge or zero."""
    h, w = image.shape[:2]
    rows, cols = np.arange(h) - dy, np.arange(w) - dx
    out = image[np.clip(rows, 0, h - 1)][:, np.clip(cols, 0, w - 1)]
    if fill == "zero":
        out = out * (((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :])[..., None]
    return out


@pytest.mark.parametrize("fill", ["edge", "zero"])
def test_shift_is_a_translation_of_at_most_15_percent(fill):
    images = _images()
    out = A.shift_and_flip(images, A.Augment(shift=0.15, fill=fill), np.random.default_rng(1))
    assert out.shape == images.shape and out.dtype == np.uint8
    seen = set()
    for image, shifted in zip(images, out):
        matches = [
            (dy, dx) for dy in range(-5, 6) for dx in range(-5, 6) if np.array_equal(_translate(image, dy, dx, fill), shifted)
        ]
        assert matches, "output is not a translation by at most round(0.15 * 32) = 5 pixels"
        seen.add(matches[0])
    assert len(seen) > 8  # Shifts really vary.


def test_shift_range_matches_rounded_uniform():
    """32 px, 15%: t ~ U(-4.8, 4.8) rounded -> every shift in -5..5 occurs, nothing beyond."""
    images = np.zeros((2000, 32, 1, 1), np.uint8)
    images[:, 16] = 255  # One bright row: its new position is the vertical shift.
    out = A.shift_and_flip(images, A.Augment(shift=0.15, fill="zero"), np.random.default_rng(0))
    shifts = out[:, :, 0, 0].argmax(axis=1) - 16
    assert set(shifts.tolist()) == set(range(-5, 6))


def test_flip_flips_about_half():
    images = _images(b=200)
    out = A.shift_and_flip(images, A.Augment(flip=True), np.random.default_rng(0))
    flipped = np.array([np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)])
    kept = np.array([np.array_equal(o, i) for o, i in zip(out, images)])
    assert np.all(flipped ^ kept) and 70 < flipped.sum() < 130


def test_deterministic_given_the_generator_and_identity_without_ops():
    images, spec = _images(), A.Augment(shift=0.15, flip=True)
    a = A.shift_and_flip(images, spec, np.random.default_rng(7))
    b = A.shift_and_flip(images, spec, np.random.default_rng(7))
    c = A.shift_and_flip(images, spec, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert A.shift_and_flip(images, A.Augment(), np.random.default_rng(0)) is images


def test_grayscale_batch_keeps_shape():
    images = _images(b=4, h=28, w=28, c=1)
    assert A.shift_and_flip(images, A.Augment(shift=0.2), np.random.default_rng(0)).shape == (4, 28, 28, 1)


def test_crop_encoded():
    from PIL import Image

    image = _images(b=1, h=60, w=90)[0]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png")
    png = buffer.getvalue()
    crops = [A.crop_encoded(png, 48, random_crop=True, rng=np.random.default_rng(s)) for s in (0, 0, 1)]
    assert all(c.shape == (48, 48, 3) and c.dtype == np.uint8 for c in crops)
    assert np.array_equal(crops[0], crops[1]) and not np.array_equal(crops[0], crops[2])
    center = A.crop_encoded(image, 48, random_crop=False, rng=np.random.default_rng(0))
    assert np.array_equal(center, A.crop_encoded(png, 48, random_crop=False, rng=np.random.default_rng(5)))
