import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from encoder.errors import BadImageError, UnsupportedImageError
from encoder.images import Preprocessing, decode, open_image, prepare_batch, read_bytes

GREY28 = Preprocessing(28, 28, 1)


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge size (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_decode_rejects_empty_bytes():
    with pytest.raises(BadImageError, match="q.png: the file is empty"):
        decode(b"", name="q.png")


def test_decode_rejects_non_image_bytes():
    with pytest.raises(BadImageError, match="not an image"):
        decode(b"hello, I am a text file\n" * 10, name="notes.txt")


def ico_holding(png: bytes) -> bytes:
    """An ICO whose one entry is `png`, its directory saying 256x256 (the most it can say)."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def test_decode_reads_only_the_formats_it_names_not_containers_that_hide_their_size():
    big = io.BytesIO()
    Image.new("L", (9000, 9000)).save(big, "PNG")  # 81 MP of black: 80 KB deflated
    ico = ico_holding(big.getvalue())
    with pytest.raises(UnsupportedImageError, match="not an image file that can be read"):
        decode(ico, name="favicon.ico")
    small = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(small, "TGA")  # a format Pillow reads, we do not
    with pytest.raises(UnsupportedImageError):
        decode(small.getvalue(), name="red.tga")
    for kind in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "PPM"):
        out = io.BytesIO()
        Image.new("RGB", (20, 10), "red").save(out, kind)
        assert decode(out.getvalue(), name=f"red.{kind.lower()}").size == (20, 10), kind


def test_decode_shrunk_keeps_the_size_and_format_and_prepares_the_same(tmp_path):
    from encoder.images import decode_shrunk

    rng = np.random.default_rng(3)
    data = png_bytes(rng.integers(0, 255, (900, 600), np.uint8))
    pre = Preprocessing(28, 28, 1)
    small, size, kind = decode_shrunk(data, "big.png", pre)
    assert size == (600, 900) and kind == "PNG" and max(small.size) < 200
    assert np.array_equal(prepare_batch([small], pre), prepare_batch([data], pre))


def test_decode_rejects_truncated_png():
    data = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))
    with pytest.raises(BadImageError, match="cut short or damaged"):
        decode(data[: len(data) // 2], name="half.png")


def test_decode_rejects_truncated_jpeg():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    with pytest.raises(BadImageError, match="cut short or damaged"):
        decode(buf.getvalue()[:300], name="half.jpg")


def test_decode_rejects_decompression_bombs_before_decoding():
    with pytest.raises(BadImageError, match="7000x7000 pixels is over the 40,000,000-pixel limit"):
        decode(bomb_png(7000, 7000), name="bomb.png")
    with pytest.raises(BadImageError,
                       match=r"bomb.png: the image says it is too large to open \(a decompression bomb"):
        decode(bomb_png(50_000, 50_000), name="bomb.png")


def test_read_bytes_rejects_missing_empty_and_oversize(tmp_path):
    with pytest.raises(BadImageError, match="no such file"):
        read_bytes(tmp_path / "absent.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(BadImageError, match="the file is empty"):
        read_bytes(tmp_path / "empty.png")
    (tmp_path / "big.png").write_bytes(b"x" * 2000)
    with pytest.raises(BadImageError, match="0.002 MB is over the 0.001 MB limit"):
        read_bytes(tmp_path / "big.png", max_bytes=1000)
    with pytest.raises(BadImageError, match="not a file"):
        read_bytes(tmp_path)


def test_all_sources_give_the_same_model_input(tmp_path):
    a = np.random.default_rng(1).integers(0, 255, (28, 28), np.uint8)
    data = png_bytes(a)
    (tmp_path / "a.png").write_bytes(data)
    expected = a[None, :, :, None]
    for source in (str(tmp_path / "a.png"), tmp_path / "a.png", data, Image.open(io.BytesIO(data))):
        np.testing.assert_array_equal(prepare_batch([source], GREY28), expected)
    np.testing.assert_array_equal(prepare_batch(a[None], GREY28), expected)
    np.testing.assert_array_equal(prepare_batch(a[None, :, :, None], GREY28), expected)


def test_colour_and_size_are_converted_as_the_card_says():
    rgb = np.zeros((56, 84, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    out = prepare_batch([png_bytes(rgb)], GREY28)
    assert out.shape == (1, 28, 28, 1) and out.dtype == np.uint8
    assert abs(int(out[0, 14, 14, 0]) - 76) <= 1  # ITU-R 601 luma of red
    out3 = prepare_batch([png_bytes(np.full((10, 10), 200, np.uint8))], Preprocessing(16, 16, 3))
    assert out3.shape == (1, 16, 16, 3) and (out3 == 200).all()


def test_transparency_becomes_white_and_invert_applies():
    rgba = np.zeros((28, 28, 4), np.uint8)  # fully transparent black
    out = prepare_batch([png_bytes(rgba, "RGBA")], Preprocessing(28, 28, 1, invert=True))
    assert (out == 0).all()  # white background, inverted


def test_array_input_errors_are_precise():
    with pytest.raises(BadImageError, match="must be uint8, not float32"):
        prepare_batch(np.zeros((2, 28, 28), np.float32), GREY28)
    with pytest.raises(BadImageError, match=r"shape \(N, H, W\)"):
        prepare_batch(np.zeros((28, 28, 1, 1, 1), np.uint8), GREY28)
    with pytest.raises(BadImageError, match="wrap a single image in a list"):
        prepare_batch(b"abc", GREY28)
    with pytest.raises(BadImageError, match="expected a path, bytes"):
        open_image(12345)


def test_one_bad_image_names_itself(tmp_path):
    good = png_bytes(np.zeros((28, 28), np.uint8))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    with pytest.raises(BadImageError, match="bad.png"):
        prepare_batch([good, tmp_path / "bad.png"], GREY28)


def test_sixteen_bit_grey_keeps_its_range():
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65,520
    out = prepare_batch([png_bytes(ramp)], Preprocessing(64, 64, 1))[0, :, :, 0]
    # Pillow alone clips 16-bit values at 255: nearly every pixel would be white.
    assert out[0, 0] == 0 and out[-1, -1] == 254 and 120 < out.mean() < 135
    np.testing.assert_array_equal(prepare_batch([png_bytes(ramp)], Preprocessing(64, 64, 3))[..., 1],
                                  out[None])


def test_a_symbolic_link_loop_is_a_bad_image_not_a_crash(tmp_path):
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    with pytest.raises(BadImageError, match="a.png: cannot read"):
        read_bytes(tmp_path / "a.png")


def test_pad_keeps_the_aspect_ratio_and_pads_with_the_background(tmp_path):
    """A long image (a signature: dark ink on white paper) fills the longer side and is padded
    with its own background, centred; stretching distorts it instead."""
    signature = np.full((20, 60), 250, np.uint8)
    signature[5:15, 10:50] = 0  # a 10x40 stroke: 4:1, as the image is 3:1
    Image.fromarray(signature).save(tmp_path / "signature.png")
    pad = Preprocessing(28, 28, 1, fit="pad")
    out = prepare_batch([tmp_path / "signature.png"], pad)[0, :, :, 0]
    ink = np.argwhere(out < 128)
    # 60 -> 28 pixels wide, 20 -> 9 high, centred: rows 9..17 hold the image, the rest is paper.
    assert (out[:9] == 250).all() and (out[18:] == 250).all()
    assert ink[:, 0].min() >= 9 and ink[:, 0].max() <= 17
    height, width = np.ptp(ink, axis=0) + 1
    assert width / height == pytest.approx(4, rel=0.25)  # the stroke keeps its shape
    stretched = prepare_batch([tmp_path / "signature.png"], GREY28)[0, :, :, 0]
    ink = np.argwhere(stretched < 128)
    assert np.ptp(ink[:, 0]) + 1 > 12  # stretched three times taller
    # The same with a dark background, in colour, upright, and inverted after padding.
    photo = np.zeros((60, 20, 3), np.uint8)
    photo[...] = (10, 20, 200)
    photo[20:40, 5:15] = 255
    out = prepare_batch([png_bytes(photo)], Preprocessing(16, 16, 3, fit="pad"))[0]
    assert (out[:, :5] == (10, 20, 200)).all() and (out[:, -5:] == (10, 20, 200)).all()
    assert (out[8, 7] == 255).all()
    inverted = prepare_batch([tmp_path / "signature.png"], Preprocessing(28, 28, 1, True, "pad"))
    assert (inverted[0, :9] == 5).all()  # paper 250, inverted
    # A square image, or an array of the input's shape, is not changed by padding.
    square = np.random.default_rng(0).integers(0, 255, (28, 28), np.uint8)
    np.testing.assert_array_equal(prepare_batch([png_bytes(square)], pad), square[None, :, :, None])
    # Arrays of another shape go through the same path as files.
    np.testing.assert_array_equal(prepare_batch(signature[None], pad),
                                  prepare_batch([tmp_path / "signature.png"], pad))
    with pytest.raises(BadImageError, match="fit must be one of stretch, pad, not 'crop'"):
        Preprocessing(28, 28, 1, fit="crop")


def test_fit_is_in_the_card_only_when_it_is_not_the_default():
    """Model ids hash `to_dict()`: models written before `fit` existed keep their ids."""
    import json
    from pathlib import Path

    assert "fit" not in GREY28.to_dict()
    pad = Preprocessing(28, 28, 1, fit="pad")
    assert pad.to_dict()["fit"] == "pad" and Preprocessing.from_dict(pad.to_dict()) == pad
    root = Path(__file__).resolve().parents[2] / "models"
    for name in ("fashion-mnist", "omniglot"):
        stored = json.loads((root / name / "card.json").read_text())["preprocessing"]
        pre = Preprocessing.from_dict(stored)
        assert pre.fit == "stretch" and pre.to_dict() == stored  # the hashed dict, unchanged
