"""Odd but valid images are accepted and come out as 8-bit RGB with the right pixels; resize policies do what they say.

Each image is saved as a real file, referenced from a one-sample JSONL, passed through `check` (no problems) and read
back with `load_samples(...)[0]["images"][0]`."""
from __future__ import annotations
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmnb.data import ImagePolicy, check, load_samples, to_rgb

RED, GREEN, BLUE, WHITE, BLACK = (220, 30, 30), (30, 170, 60), (40, 80, 220), (255, 255, 255), (0, 0, 0)


def dataset(tmp_path: Path, img: Image.Image, name: str, **save_kw) -> Path:
    "Save `img` as `name` and write a one-sample JSONL pointing at it."
    img.save(tmp_path/name, **save_kw)
    path = tmp_path/"data.jsonl"
    path.write_text(json.dumps({"prompt": "<image>Describe it.", "completion": "A picture.", "images": [name]}) + "\n")
    return path

def decode(tmp_path: Path, img: Image.Image, name: str, policy: ImagePolicy | None = None, **save_kw) -> Image.Image:
    "The image as `load_samples` gives it, after `check` found nothing wrong."
    path = dataset(tmp_path, img, name, **save_kw)
    report = check(path, policy=policy)
    assert report.ok, report
    out = load_samples(path, policy=policy)[0]["images"][0]
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    assert np.asarray(out).dtype == np.uint8
    return out

def close(pixel, expected, tol=6) -> bool: return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))

def halves(size, left, right, mode="RGB") -> Image.Image:
    "An image whose left half is `left` and right half is `right`."
    w, h = size
    img = Image.new(mode, size, left)
    img.paste(right, (w // 2, 0, w, h))
    return img


# ---------------------------------------------------------------- modes

def test_cmyk_jpeg(tmp_path):
    stored = halves((48, 32), RED, BLUE).convert("CMYK")
    out = decode(tmp_path, stored, "cmyk.jpg", quality=95)
    assert Image.open(tmp_path/"cmyk.jpg").mode == "CMYK"
    assert out.size == (48, 32)
    assert close(out.getpixel((8, 16)), RED, 10) and close(out.getpixel((40, 16)), BLUE, 10)


def test_16bit_greyscale_png_is_scaled_not_clipped(tmp_path):
    a = np.zeros((24, 48), dtype=np.uint16)
    a[:, 16:32], a[:, 32:] = 32768, 65535  # black | mid grey | white
    out = decode(tmp_path, Image.fromarray(a), "grey16.png")
    assert Image.open(tmp_path/"grey16.png").mode == "I;16"
    assert out.getpixel((40, 12)) == WHITE  # 65535 is full white
    assert out.getpixel((4, 12)) == BLACK
    assert all(abs(c - 128) <= 1 for c in out.getpixel((24, 12)))


def test_16bit_dark_greyscale_png_stays_dark(tmp_path):
    "Values all below 256 in a 16-bit image are very dark, not mid-to-white 8-bit values."
    a = np.full((24, 24), 200, dtype=np.uint16)
    out = decode(tmp_path, Image.fromarray(a), "dark16.png")
    assert out.getpixel((5, 5)) == (1, 1, 1)  # 200/257 rounds to 1


def test_palette_png_transparent_index_becomes_white(tmp_path):
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 0, 0, *RED] + [0] * (254 * 3))  # index 0 is black (and transparent), 1 is red
    img.paste(1, (16, 0, 32, 32))
    out = decode(tmp_path, img, "palette.png", transparency=0)
    assert Image.open(tmp_path/"palette.png").info.get("transparency") == 0
    assert out.getpixel((4, 16)) == WHITE  # not the black of the palette entry
    assert out.getpixel((28, 16)) == RED


def test_rgba_transparent_areas_become_white(tmp_path):
    img = halves((32, 32), (0, 0, 0, 0), (*BLUE, 255), "RGBA")
    img.paste((0, 0, 0, 128), (0, 24, 32, 32))  # a half-transparent black band at the bottom
    out = decode(tmp_path, img, "rgba.png")
    assert out.getpixel((4, 8)) == WHITE
    assert out.getpixel((28, 8)) == BLUE
    assert all(abs(c - 127) <= 2 for c in out.getpixel((4, 28)))  # black at alpha 128 over white


def test_rgba_background_follows_pad_color(tmp_path):
    img = halves((32, 32), (0, 0, 0, 0), (*BLUE, 255), "RGBA")
    out = decode(tmp_path, img, "rgba.png", policy=ImagePolicy(pad_color=(0, 255, 0)))
    assert out.getpixel((4, 8)) == (0, 255, 0)


def test_la_transparent_areas_become_white(tmp_path):
    out = decode(tmp_path, halves((32, 32), (0, 0), (50, 255), "LA"), "la.png")
    assert out.getpixel((4, 16)) == WHITE
    assert out.getpixel((28, 16)) == (50, 50, 50)


@pytest.mark.parametrize("orientation, left, right", [
    (6, BLUE, RED),  # 6: rotate 90 degrees clockwise to display, so the stored top (red) ends up on the right
    (8, RED, BLUE),  # 8: rotate 90 degrees counter-clockwise, so the stored top ends up on the left
])
def test_exif_rotated_jpeg_is_turned_upright(tmp_path, orientation, left, right):
    stored = Image.new("RGB", (64, 32), RED)  # stored 64 wide, 32 high: top half red, bottom half blue
    stored.paste(BLUE, (0, 16, 64, 32))
    exif = stored.getexif(); exif[0x0112] = orientation
    out = decode(tmp_path, stored, "rotated.jpg", exif=exif, quality=95)
    assert Image.open(tmp_path/"rotated.jpg").size == (64, 32)
    assert out.size == (32, 64)  # width and height swapped
    assert close(out.getpixel((4, 32)), left, 12) and close(out.getpixel((28, 32)), right, 12)


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in (RED, GREEN, BLUE)]
    frames[0].save(tmp_path/"anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    gif = Image.open(tmp_path/"anim.gif")
    assert gif.n_frames == 3
    gif.seek(2); assert close(gif.convert("RGB").getpixel((5, 5)), BLUE, 0)
    path = tmp_path/"data.jsonl"
    path.write_text(json.dumps({"prompt": "<image>Colour?", "completion": "red", "images": ["anim.gif"]}) + "\n")
    assert check(path).ok
    out = load_samples(path)[0]["images"][0]
    assert out.mode == "RGB" and out.size == (32, 32)
    assert out.getpixel((5, 5)) == RED


def test_greyscale_l(tmp_path):
    out = decode(tmp_path, halves((32, 32), 100, 230, "L"), "grey.png")
    assert out.getpixel((4, 4)) == (100, 100, 100) and out.getpixel((28, 4)) == (230, 230, 230)


def test_bilevel_1(tmp_path):
    out = decode(tmp_path, halves((32, 32), 0, 1, "1"), "bw.png")
    assert out.getpixel((4, 4)) == BLACK and out.getpixel((28, 4)) == WHITE


# ---------------------------------------------------------------- resize policies

@pytest.fixture
def wide(tmp_path) -> Path:
    "A 64x32 dataset image: left half red, right half blue."
    return dataset(tmp_path, halves((64, 32), RED, BLUE), "wide.png")

def load(path, **policy) -> Image.Image:
    return load_samples(path, policy=ImagePolicy(**policy))[0]["images"][0]


def test_no_resize_by_default(wide):
    assert load_samples(wide)[0]["images"][0].size == (64, 32)


@pytest.mark.parametrize("size, expected", [(32, (32, 16)), (128, (128, 64)), (64, (64, 32))])
def test_longest_edge_keeps_aspect(wide, size, expected):
    out = load(wide, resize="longest_edge", size=size)
    assert out.size == expected
    assert close(out.getpixel((2, expected[1] // 2)), RED) and close(out.getpixel((expected[0] - 3, expected[1] // 2)), BLUE)


def test_pad_fills_with_pad_color(wide):
    out = load(wide, resize="pad", size=(64, 64))
    assert out.size == (64, 64)
    assert out.getpixel((10, 2)) == WHITE and out.getpixel((10, 61)) == WHITE  # bands above and below
    assert close(out.getpixel((10, 32)), RED) and close(out.getpixel((54, 32)), BLUE)
    green = load(wide, resize="pad", size=48, pad_color=(0, 255, 0))
    assert green.size == (48, 48) and green.getpixel((24, 1)) == (0, 255, 0)


@pytest.mark.parametrize("size, expected", [((20, 50), (20, 50)), (24, (24, 24))])
def test_stretch_to_exact_size(wide, size, expected):
    out = load(wide, resize="stretch", size=size)
    assert out.size == expected
    assert close(out.getpixel((1, expected[1] // 2)), RED) and close(out.getpixel((expected[0] - 2, expected[1] // 2)), BLUE)


def test_max_pixels_scales_down_keeping_aspect(wide):
    out = load(wide, max_pixels=512)
    w, h = out.size
    assert w * h <= 512 and (w, h) == (32, 16)
    odd = load(wide, max_pixels=1000)
    w, h = odd.size
    assert w * h <= 1000 and abs(w / h - 2) < 0.1 and w * h > 900


def test_min_pixels_scales_up_keeping_aspect(wide):
    assert load(wide, min_pixels=64 * 32 * 4).size == (128, 64)


def test_min_pixels_is_reached(wide):
    "min_pixels is documented as 'scale up until width*height reaches this': the result must not fall short."
    w, h = load(wide, min_pixels=6144).size  # 3x the pixels: the exact scale sqrt(3) is not a whole number
    assert w * h >= 6144, (w, h)
    assert abs(w / h - 2) < 0.1


def test_pixel_bounds_leave_images_inside_alone(wide):
    assert load(wide, min_pixels=100, max_pixels=10_000).size == (64, 32)


FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}

@pytest.mark.parametrize("name", FILTERS)
def test_resample_names_pick_the_filter(tmp_path, name):
    src = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    path = dataset(tmp_path, src, "noise.png")
    out = np.asarray(load(path, resize="stretch", size=(23, 17), resample=name))
    for other, flt in FILTERS.items():
        assert np.array_equal(out, np.asarray(src.resize((23, 17), flt))) == (other == name), other


@pytest.mark.parametrize("kwargs, match", [
    (dict(resample="nearest"), "bilinear, bicubic, lanczos"),
    (dict(resize="crop", size=32), "none, longest_edge, pad, stretch"),
    (dict(resize="pad"), "needs a size"),
])
def test_bad_policies_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ImagePolicy(**kwargs)


def test_to_rgb_directly_on_rgba():
    out = to_rgb(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), background=(10, 20, 30))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (10, 20, 30)
