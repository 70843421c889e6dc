"""Reading pixels: every mode to RGB, EXIF, broken files, zip members, name filters."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from easycls.data.images import (
    UnreadableImage,
    check_images,
    is_image_name,
    load_resized,
    open_image,
    split_zip_ref,
    zip_ref,
)


def _rgb(h=30, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(img, path, **kw):
    img.save(path, **kw)
    return str(path)


def _mode_images():
    rgb = Image.fromarray(_rgb())
    ramp16 = np.linspace(0, 65535, 30 * 40).reshape(30, 40).astype(np.uint16)
    p_trans = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    p_trans.info["transparency"] = 0
    return {
        "L": (rgb.convert("L"), "png"),
        "LA": (rgb.convert("LA"), "png"),
        "P": (rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "png"),
        "P-transparent": (p_trans, "png"),
        "RGBA": (rgb.convert("RGBA"), "png"),
        "CMYK": (rgb.convert("CMYK"), "jpeg"),
        "I;16": (Image.fromarray(ramp16), "png"),
        "1": (rgb.convert("1"), "png"),
        "F": (Image.fromarray(ramp16.astype(np.float32) / 65535), "tiff"),
    }


@pytest.mark.parametrize("name", list(_mode_images()))
def test_every_mode_becomes_rgb_uint8(tmp_path, name):
    img, fmt = _mode_images()[name]
    path = _save(img, tmp_path / f"x.{fmt}", format=fmt.upper())
    out = open_image(path)
    assert out.mode == "RGB" and out.size == (40, 30)
    arr = load_resized(path, 16)
    assert arr.dtype == np.uint8 and arr.shape == (16, 16, 3)


def test_16bit_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 30 * 40).reshape(30, 40).astype(np.uint16)
    path = _save(Image.fromarray(ramp), tmp_path / "deep.png")
    a = np.asarray(open_image(path))
    assert a.min() == 0 and a.max() == 255
    assert 100 < a.mean() < 155  # a linear ramp stays mid-grey on average
    assert (a == 255).mean() < 0.01


def test_transparency_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 17  # garbage colour under fully transparent pixels
    path = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "clear.png")
    assert (np.asarray(open_image(path)) == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(Image.fromarray(_rgb(30, 40)), tmp_path / "rot.jpg", exif=exif)
    assert open_image(path).size == (30, 40)


def test_load_resized_scales_short_side_and_center_crops(tmp_path):
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, 20:60] = 255  # white center square, black sides that the crop removes
    path = _save(Image.fromarray(a), tmp_path / "wide.png")
    out = load_resized(path, 20)
    assert out.shape == (20, 20, 3)
    assert out[:, 1:-1].min() >= 250  # edge columns may blend a little of the cut-off border


def _broken_files(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not a picture")
    return {
        "truncated": str(tmp_path / "trunc.jpg"),
        "zero-byte file": str(tmp_path / "empty.jpg"),
        "not an image": str(tmp_path / "text.jpg"),
        "missing": str(tmp_path / "nope.jpg"),
    }


def test_broken_files_raise_with_reason(tmp_path):
    for reason, ref in _broken_files(tmp_path).items():
        for read in (open_image, lambda r: load_resized(r, 8)):
            with pytest.raises(UnreadableImage) as info:
                read(ref)
            assert info.value.reason == reason and info.value.ref == ref


def test_check_images_reports_exactly_the_broken(tmp_path):
    good = [_save(Image.fromarray(_rgb(seed=i)), tmp_path / f"ok{i}.jpg") for i in range(3)]
    broken = _broken_files(tmp_path)
    refs = [good[0], broken["truncated"], good[1], broken["zero-byte file"]]
    refs += [broken["not an image"], good[2], broken["missing"]]
    assert check_images(refs, workers=2) == {
        1: "truncated",
        3: "zero-byte file",
        4: "not an image",
        6: "missing",
    }


def test_zip_refs_read_same_pixels(tmp_path):
    path = _save(Image.fromarray(_rgb()), tmp_path / "a.png")
    zpath = tmp_path / "data.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(path, "cls/a.png")
        zf.writestr("cls/empty.jpg", b"")
    ref = zip_ref(zpath, "cls/a.png")
    assert split_zip_ref(ref) == (str(zpath), "cls/a.png")
    assert split_zip_ref(path) is None
    np.testing.assert_array_equal(load_resized(ref, 12), load_resized(path, 12))
    assert check_images([ref, zip_ref(zpath, "cls/empty.jpg"), zip_ref(zpath, "x.jpg")]) == {
        1: "zero-byte file",
        2: "missing",
    }


@pytest.mark.parametrize(
    "name, ok",
    [
        ("a.JPEG", True),
        ("x.Png", True),
        ("dir/b.webp", True),
        (".DS_Store", False),
        ("Thumbs.db", False),
        ("__MACOSX/a/b.jpg", False),
        ("cls/._b.jpg", False),
        (".hidden.jpg", False),
        ("notes.txt", False),
    ],
)
def test_is_image_name(name, ok):
    assert is_image_name(name) is ok


def test_a_file_larger_than_one_read_is_streamed_to_the_same_pixels(tmp_path, monkeypatch):
    from easycls.data import images
    from easycls.data.images import load_resized
    a = np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.jpg", quality=90)
    whole = load_resized(str(tmp_path / "x.jpg"), 16)
    opened = []
    real_open = images.Image.open
    monkeypatch.setattr(images.Image, "open", lambda src, *a: opened.append(src) or real_open(src))
    monkeypatch.setattr(images, "_READ_AT_ONCE", 100)  # this file is larger: Pillow reads it
    np.testing.assert_array_equal(load_resized(str(tmp_path / "x.jpg"), 16), whole)
    assert opened == [str(tmp_path / "x.jpg")]  # given the path, not bytes read beforehand
    with pytest.raises(UnreadableImage, match="not a file"):
        load_resized(str(tmp_path), 16)
