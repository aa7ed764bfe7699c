"""Decoding any image mode to RGB, reading masks, and spotting bad files."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from minimaxad.data import BadImageError, BadMaskError, DatasetNotFoundError, load_image, load_mask
from minimaxad.data.io import check_mask_size, list_images, mask_to_uint8, probe_image

from .helpers import photo, save_image

# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1", "RGB"])
def test_any_pil_mode_decodes_to_rgb(tmp_path, mode):
    src = Image.fromarray(photo((30, 20), 1))
    ext = ".jpg" if mode == "CMYK" else ".png"
    path = tmp_path / f"img{ext}"
    src.convert(mode).save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (30, 20)
    expected = np.asarray(src.convert(mode).convert("RGB"), dtype=np.int16)
    tol = 8 if mode == "CMYK" else 0  # JPEG is lossy
    assert np.abs(np.asarray(out, dtype=np.int16) - expected).max() <= tol


def test_grayscale_gives_three_equal_channels(tmp_path):
    save_image(tmp_path / "g.png", (16, 12), 3, mode="L")
    arr = np.asarray(load_image(tmp_path / "g.png"))
    assert arr.shape == (12, 16, 3)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_rgba_drops_alpha_like_pil_convert(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent: the colour underneath is kept (authors' convert('RGB'))
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert tuple(np.asarray(load_image(tmp_path / "a.png"))[0, 0]) == (200, 0, 0)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 257 * 100, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = np.asarray(load_image(tmp_path / "deep.png"))[0, :, 0]
    # Pillow's own convert would clip 25700 to 255; the scale 65535 -> 255 keeps the tones.
    assert out.tolist() == [0, 100, 255, 128]


def _png_rgb16(path, arr):
    """Write a 48-bit RGB PNG by hand (PIL cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def test_16bit_rgb_png(tmp_path):
    arr = np.zeros((2, 3, 3), np.uint16)
    arr[0, 0] = (65535, 257 * 100, 0)
    arr[1, 2] = (32896, 0, 65535)
    _png_rgb16(tmp_path / "rgb16.png", arr)
    out = np.asarray(load_image(tmp_path / "rgb16.png"))
    assert out.shape == (2, 3, 3) and out[0, 0].tolist() == [255, 100, 0] and out[1, 2].tolist() == [128, 0, 255]


def test_float_tiff_in_unit_range(tmp_path):
    arr = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(arr, "F").save(tmp_path / "f.tif")
    assert np.asarray(load_image(tmp_path / "f.tif"))[0, :, 1].tolist() == [0, 128, 255]


def test_exif_rotated_jpeg_is_upright(tmp_path):
    # A 30x20 landscape picture stored with orientation 6 (rotate 90 degrees clockwise to show).
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[:, :10] = 255  # white on the left of the stored pixels
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    out = np.asarray(load_image(tmp_path / "phone.jpg"))
    assert out.shape == (30, 20, 3)  # portrait once upright
    assert out[:8].mean() > 200 and out[-8:].mean() < 50  # stored left = displayed top
    assert probe_image(tmp_path / "phone.jpg").size == (20, 30)


def test_arrays_and_pil_inputs(tmp_path):
    rgb = photo((10, 6), 2)
    assert np.array_equal(np.asarray(load_image(rgb)), rgb)
    assert np.array_equal(np.asarray(load_image(Image.fromarray(rgb))), rgb)
    gray16 = rgb[..., 0].astype(np.uint16) * 257
    assert np.array_equal(np.asarray(load_image(gray16))[..., 2], rgb[..., 0])
    unit = rgb.astype(np.float32) / 255
    assert np.abs(np.asarray(load_image(unit)).astype(int) - rgb).max() <= 1
    assert np.array_equal(np.asarray(load_image(np.dstack([rgb, np.full((6, 10), 9, np.uint8)]))), rgb)
    with pytest.raises(ValueError, match=r"shape \(6, 10, 2\)"):
        load_image(rgb[..., :2])


def test_unreadable_and_truncated_files_name_the_path(tmp_path):
    (tmp_path / "text.png").write_text("this is not an image")
    with pytest.raises(BadImageError, match="text.png"):
        load_image(tmp_path / "text.png")
    save_image(tmp_path / "full.png", (64, 64), 1)
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match=r"cut\.png.*skip_bad_images"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(BadImageError, match="cut.png"):
        probe_image(tmp_path / "cut.png")
    Image.fromarray(photo((64, 64), 2)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(BadImageError, match="cut.jpg"):
        probe_image(tmp_path / "cut.jpg")
    with pytest.raises(DatasetNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    info = probe_image(tmp_path / "full.jpg")
    assert (info.format, info.size) == ("JPEG", (64, 64))


# -- only bad data is "cannot decode": a bug or an out-of-memory propagates -------------------------
def _cut_png(tmp_path):
    save_image(tmp_path / "full.png", (64, 64), 1)
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    return tmp_path / "cut.png"


def test_a_corrupt_file_is_still_a_bad_image_with_the_same_message(tmp_path):
    cut = _cut_png(tmp_path)
    with pytest.raises(BadImageError) as caught:
        load_image(cut)
    assert str(caught.value) == (
        f"cannot decode image {cut}: image file is truncated. Expected a complete PNG/JPEG/BMP/TIFF/WebP file; "
        "replace the file, or pass skip_bad_images=True to leave it out with a warning."
    )
    assert isinstance(caught.value.__cause__, OSError)


@pytest.mark.parametrize("error", [MemoryError, TypeError, KeyError, IndexError, ZeroDivisionError])
def test_an_error_inside_the_decoder_that_is_not_bad_data_propagates(tmp_path, monkeypatch, error):
    save_image(tmp_path / "good.png", (16, 16), 1)

    def fails(self, *args, **kwargs):
        raise error("raised inside the decoder")

    monkeypatch.setattr(Image.Image, "load", fails)
    with pytest.raises(error, match="raised inside the decoder"):
        load_image(tmp_path / "good.png")
    with pytest.raises(error, match="raised inside the decoder"):
        probe_image(tmp_path / "good.png", full=True)
    with pytest.raises(error, match="raised inside the decoder"):
        load_mask(tmp_path / "good.png")


@pytest.mark.parametrize("error", [MemoryError, TypeError, KeyError, IndexError])
def test_an_error_in_our_conversion_is_not_a_bad_image(tmp_path, monkeypatch, error):
    import minimaxad.data.io as image_io

    save_image(tmp_path / "good.png", (16, 16), 1)
    save_image(tmp_path / "mask.png", (16, 16), 1, mode="L")

    def bug(im, *more):
        raise error("a bug in the conversion")

    monkeypatch.setattr(image_io, "to_rgb", bug)
    monkeypatch.setattr(image_io, "_mask_raw_array", bug)
    with pytest.raises(error, match="a bug in the conversion"):
        load_image(tmp_path / "good.png")
    with pytest.raises(error, match="a bug in the conversion"):
        load_mask(tmp_path / "mask.png")


def test_out_of_memory_while_opening_is_not_a_bad_image(tmp_path, monkeypatch):
    save_image(tmp_path / "good.png", (16, 16), 1)

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(Image, "open", no_memory)
    with pytest.raises(MemoryError):
        load_image(tmp_path / "good.png")


def _exif(*entries: tuple[int, int, int, bytes]) -> bytes:
    """An EXIF block (little-endian TIFF, one IFD) of (tag, type, count, 4 value bytes) entries."""
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI4s", *e) for e in entries) + struct.pack("<I", 0)
    return b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd


ROTATE_6 = (0x0112, 3, 1, struct.pack("<HH", 6, 0))  # Orientation = 6, a SHORT


@pytest.mark.parametrize(
    "damaged",
    [
        (0x0128, 2, 4, b"ab\x00\x00"),  # ResolutionUnit (a SHORT) stored as text: PIL's writer raises struct.error
        (0x011A, 2, 4, b"ab\x00\x00"),  # XResolution (a RATIONAL) stored as text: TypeError
        (0x010F, 11, 1, struct.pack("<f", 1.5)),  # Make (text) stored as a FLOAT: AttributeError
    ],
)
def test_a_damaged_exif_value_does_not_spoil_a_good_photo(tmp_path, damaged):
    """ImageOps.exif_transpose re-encodes the rest of the EXIF block and fails on such values;
    the photo itself is fine and is turned upright."""
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[:, :10] = 255
    Image.fromarray(arr).save(tmp_path / "phone.jpg", exif=_exif(ROTATE_6, damaged), quality=95)
    out = load_image(tmp_path / "phone.jpg")
    assert out.size == (20, 30) and out.mode == "RGB"
    assert np.asarray(out)[:8].mean() > 200 and np.asarray(out)[-8:].mean() < 50  # stored left = displayed top
    assert out.getexif().get(0x0112) is None  # never turned twice
    assert np.array_equal(np.asarray(load_image(out)), np.asarray(out))
    assert probe_image(tmp_path / "phone.jpg", full=True).size == (20, 30)


def test_a_damaged_exif_header_is_a_bad_image(tmp_path):
    """PIL raises SyntaxError reading it (a JPEG's is read, and dropped, by PIL when it opens)."""
    broken = b"Exif\x00\x00MX*\x00" + bytes(8)  # not a TIFF byte order
    Image.fromarray(photo((8, 6), 1)).save(tmp_path / "x.png", exif=broken)
    with pytest.raises(BadImageError, match=r"cannot decode image .*x\.png: not a TIFF file") as caught:
        load_image(tmp_path / "x.png")
    assert isinstance(caught.value.__cause__, SyntaxError)


def test_list_images_skips_hidden_and_other_files(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.JPEG", "._a.jpg", ".hidden.png", "transforms.json", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.JPEG"]


# --------------------------------------------------------------------------- masks


def _save(arr, path, mode=None):
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def test_mask_formats(tmp_path):
    base = np.zeros((10, 12), np.uint8)
    base[2:6, 3:9] = 1
    want = base * 255
    assert np.array_equal(load_mask(_save(base * 255, tmp_path / "m255.png")), want)
    assert np.array_equal(load_mask(_save(base, tmp_path / "m01.png")), want)
    assert np.array_equal(load_mask(_save(base.astype(np.uint16) * 65535, tmp_path / "m16.png")), want)
    assert np.array_equal(load_mask(_save(base.astype(bool), tmp_path / "m1.png")), want)
    red = np.zeros((10, 12, 3), np.uint8)
    red[..., 0] = base * 255  # red on black: still a mask (brightest channel)
    assert np.array_equal(load_mask(_save(red, tmp_path / "red.png")), want)
    f = base.astype(np.float32)
    assert np.array_equal(load_mask(_save(f, tmp_path / "f.tif", "F")), want)
    labels = base * 3  # class-label masks need mask_mode='nonzero'
    assert np.array_equal(load_mask(_save(labels, tmp_path / "lab.png"), mode="nonzero"), want)
    assert load_mask(_save(np.zeros((4, 4), np.uint8), tmp_path / "empty.png")).max() == 0


def test_antialiased_edges_are_kept_for_resize(tmp_path):
    m = np.zeros((20, 20), np.uint8)
    m[5:15, 5:15] = 255
    m[4, 5:15] = 100  # anti-aliased edge
    out = load_mask(_save(m, tmp_path / "aa.png"))
    assert out[4, 6] == 100 and out[6, 6] == 255


def test_not_a_mask_errors(tmp_path):
    with pytest.raises(BadMaskError, match=r"photo\.png.*not a binary mask"):
        load_mask(_save(photo((40, 30), 4), tmp_path / "photo.png"))
    with pytest.raises(BadMaskError, match=r"values are 0\.\.3.*mask_mode='nonzero'"):
        load_mask(_save(np.array([[0, 3], [2, 1]], np.uint8), tmp_path / "labels.png"))
    with pytest.raises(BadMaskError, match=r"out of range"):
        load_mask(_save(np.array([[0.0, 700.0]], np.float32), tmp_path / "big.tif", "F"))
    with pytest.raises(BadMaskError, match=r"out of range"):
        load_mask(_save(np.array([[0.0, -1.0]], np.float32), tmp_path / "neg.tif", "F"))
    (tmp_path / "junk.png").write_bytes(b"\x89PNG junk")
    with pytest.raises(BadMaskError, match="junk.png"):
        load_mask(tmp_path / "junk.png")
    with pytest.raises(BadMaskError, match="shape"):
        mask_to_uint8(np.zeros((2, 2, 2)), "x")


def test_mask_size_check():
    check_mask_size((100, 50), (200, 100), "m.png")  # same aspect: resized later
    with pytest.raises(BadMaskError, match=r"m\.png: mask is 100x100 but its image is 200x100"):
        check_mask_size((100, 100), (200, 100), "m.png")


# --------------------------------------------------------------------------- white level of deep photos


def _save16(path, arr):
    Image.fromarray(np.asarray(arr, dtype=np.uint16)).save(path)
    return path


def test_white_level_scales_a_12_bit_photo_to_the_full_8_bit_range(tmp_path):
    # a 12-bit camera's photo in a 16-bit file: 4095 is white, not 4095/65535 of white
    path = _save16(tmp_path / "mono12.png", [[0, 1000, 2048, 4095, 60000]])
    assert np.asarray(load_image(path, white_level=4095))[0, :, 0].tolist() == [0, 62, 128, 255, 255]
    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 4, 8, 16, 233]  # full range: nearly black
    arr = np.array([[0, 1000, 2048, 4095, 60000]], np.uint16)  # arrays: the same rule
    assert np.asarray(load_image(arr, white_level=4095))[0, :, 1].tolist() == [0, 62, 128, 255, 255]
    rgb8 = np.full((2, 2, 3), 77, np.uint8)  # 8-bit photos are never rescaled
    assert np.asarray(load_image(rgb8, white_level=4095)).max() == 77


def test_measure_white_level_is_the_999th_percentile_of_deep_photos(tmp_path):
    rng = np.random.default_rng(0)
    photos = [rng.integers(50, 900, size=(40, 60)) for _ in range(3)]
    paths = [_save16(tmp_path / f"p{i}.png", a) for i, a in enumerate(photos)]
    from minimaxad.data.io import WHITE_LEVEL_PERCENTILE, measure_white_level

    expected = np.percentile(np.concatenate([a.ravel() for a in photos]), WHITE_LEVEL_PERCENTILE)
    assert measure_white_level(paths) == pytest.approx(expected, rel=1e-6)
    assert 850 < measure_white_level(paths) < 900
    # 8-bit photos have no white level to measure; nor have all-black ones
    save_image(tmp_path / "rgb.png", (16, 16), 1)
    assert measure_white_level([tmp_path / "rgb.png"]) is None
    assert measure_white_level([_save16(tmp_path / "black.png", np.zeros((4, 4)))]) is None
    assert measure_white_level([]) is None
    # an unreadable file is skipped (the dataset check reports it), the others still count
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert measure_white_level([tmp_path / "broken.png", *paths]) == pytest.approx(expected, rel=1e-6)


def test_measure_white_level_reads_a_sample_of_many_photos(tmp_path):
    from minimaxad.data.io import measure_white_level

    paths = [_save16(tmp_path / f"p{i:02d}.png", np.full((4, 4), 100 * (i + 1))) for i in range(20)]
    # 5 evenly spaced photos (the first, the last and three between): their values only
    assert measure_white_level(paths, max_photos=5) == pytest.approx(
        np.percentile(np.repeat([100, 600, 1100, 1500, 2000], 16), 99.9)
    )


# --------------------------------------------------------------------------- masks of EXIF-turned photos


def _turned_category(root, orientation: int, mask_on: str):
    """One MVTec category whose defective photo is stored 40x24 (a bright block at rows 4-9,
    columns 28-35 of the stored pixels) with an EXIF ``orientation``, and its mask drawn on the
    ``'stored'`` pixels or on the ``'upright'`` photo."""
    from minimaxad.data.io import _UPRIGHT

    stored = np.full((24, 40, 3), 40, np.uint8)
    stored[4:10, 28:36] = 250
    mask = np.zeros((24, 40), np.uint8)
    mask[4:10, 28:36] = 255
    if mask_on == "upright":
        mask = np.asarray(Image.fromarray(mask).transpose(_UPRIGHT[orientation]))
    for folder in ("train/good", "test/good", "test/dent", "ground_truth/dent"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    for path in (root / "train/good/a.jpg", root / "test/good/a.jpg", root / "test/dent/a.jpg"):
        Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=98)
    Image.fromarray(mask).save(root / "ground_truth/dent/a_mask.png")
    return root


@pytest.mark.parametrize(
    "orientation, mask_on", [(6, "stored"), (6, "upright"), (8, "stored"), (3, "stored"), (2, "stored"), (1, "stored")]
)
def test_the_mask_of_an_exif_turned_photo_covers_its_defect(tmp_path, orientation, mask_on):
    from minimaxad.data import build_dataset

    root = _turned_category(tmp_path / "cat", orientation, mask_on)
    test = build_dataset("mvtec", root, "test", image_size=32)  # the check accepts either grid
    (index,) = [i for i, r in enumerate(test.records) if r.label == 1]
    photo, mask = test.decode(index)
    assert mask.shape == (photo.size[1], photo.size[0])  # on the upright photo's grid
    bright = np.asarray(photo)[..., 0] > 150
    assert bright.sum() == (mask > 127).sum() == 48 and np.array_equal(bright, mask > 127)
    item = test[index]  # and after the resize: the defect's pixels are the bright ones
    defect = item["mask"][0] > 0.5
    assert item["image"][0][defect].mean() > 1.5 and item["image"][0][~defect].mean() < -1.0


def test_mask_to_photo_grid_keeps_an_upright_mask_and_turns_a_stored_one():
    from minimaxad.data.io import mask_to_photo_grid

    stored = np.zeros((3, 5), np.uint8)
    stored[0, 4] = 255  # top right of the stored pixels
    # orientation 6: stored 5x3 (w x h) shows as 3x5; its top-right pixel lands bottom right
    turned = mask_to_photo_grid(stored, (3, 5), 6)
    assert turned.shape == (5, 3) and turned[4, 2] == 255 and turned.sum() == 255
    assert mask_to_photo_grid(turned, (3, 5), 6) is turned  # fits only the upright photo: kept
    assert mask_to_photo_grid(stored, (5, 3), 1) is stored  # no orientation
    assert mask_to_photo_grid(stored, (5, 3), 3)[2, 0] == 255  # 180 degrees: stored pixels assumed
