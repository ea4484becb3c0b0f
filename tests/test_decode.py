import io

import numpy as np
import pytest
from PIL import Image

from tests.dicom_builders import PHI_FRAGMENTS, header, to_bytes, ultrasound
from thyro.data.decode import DecodeError, decode, decode_frames


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


GREY = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # 64x64 ramp


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"),
                                      ("L", "JPEG"), ("RGB", "BMP"), ("L", "TIFF"), ("CMYK", "JPEG"),
                                      ("CMYK", "TIFF"), ("LA", "PNG"), ("1", "PNG")])
def test_every_mode_becomes_rgb_uint8(mode, fmt):
    img = Image.fromarray(GREY).convert(mode)
    out = decode(_encode(img, fmt), f"x.{fmt.lower()}")
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8


def test_16bit_png_scaled_by_nominal_range():
    a = (GREY.astype(np.uint16) * 16)  # 12-bit data in a 16-bit container
    data = _encode(Image.fromarray(a))
    out = decode(data, "x.png")  # the container's range, whatever the image's max
    assert out.shape == (64, 64, 3)
    assert abs(int(out[0, -1, 0]) - round(int(a[0, -1]) * 255 / 65535)) <= 1
    out12 = decode(data, "x.png", bit_depth=12)  # a configured depth for the archive
    assert abs(int(out12[0, -1, 0]) - round(int(a[0, -1]) * 255 / 4095)) <= 1


def test_signed_16bit_tiff_offset_by_half_range():
    tifffile = pytest.importorskip("tifffile")
    a = np.array([[-32768, 0, 32767] * 6] * 16, np.int16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, a)  # PIL itself would widen int16 to a 32-bit TIFF
    out = decode(buf.getvalue(), "s.tif")[0, :3, 0]
    assert list(out) == [0, round(32768 * 255 / 65535), 255]


def test_rgba_composites_on_black():
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 200  # fully transparent grey
    assert decode(_encode(Image.fromarray(rgba, "RGBA")), "a.png").max() == 0


@pytest.mark.parametrize("data,problem", [
    (b"", "empty"),
    (b"not an image at all" * 10, "not a recognised image"),
    (_encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)))[:1500],
     "cannot decode"),
    (_encode(Image.new("L", (1, 1))), "smaller than"),
])
def test_bad_files_are_named(data, problem):
    with pytest.raises(DecodeError, match=problem) as e:
        decode(data, "scan_042.png")
    assert "scan_042.png" in str(e.value)


def test_huge_image_rejected_before_decoding():
    data = _encode(Image.new("L", (12000, 12000)))
    with pytest.raises(DecodeError, match="larger than"):
        decode(data, "huge.png")


# --- DICOM -------------------------------------------------------------------

def test_dicom_monochrome1_is_inverted():
    a = GREY.copy()
    out1 = decode(to_bytes(ultrasound(a, "MONOCHROME1")), "m1.dcm")
    out2 = decode(to_bytes(ultrasound(a, "MONOCHROME2")), "m2.dcm")
    assert np.array_equal(out1, 255 - out2)


def test_dicom_12bit_uses_bits_stored():
    a = (GREY.astype(np.uint16) * 16)
    out = decode(to_bytes(ultrasound(a, bits=12)), "m.dcm")
    assert out[0, -1, 0] == round(int(a[0, -1]) * 255 / 4095)


def test_dicom_multiframe_frame_policy():
    frames = np.stack([np.full((32, 32, 3), v, np.uint8) for v in (10, 100, 200)])
    data = to_bytes(ultrasound(frames, "RGB"))
    assert decode(data, "c.dcm", "first")[0, 0, 0] == 10
    assert decode(data, "c.dcm", "middle")[0, 0, 0] == 100
    assert [i for i, _ in decode_frames(data, "c.dcm", "all")] == [0, 1, 2]


def test_dicom_ybr_full_422_converted_to_rgb():
    # YBR_FULL_422 stores 2 luma + 1 Cb + 1 Cr per pair of pixels. A flat colour
    # with Y=128, Cb=Cr=128 is mid grey; Cr=200 pushes red up.
    h, w = 32, 32
    pair = np.array([128, 128, 128, 200], np.uint8)  # Y0 Y1 Cb Cr
    data = to_bytes(ultrasound(np.tile(pair, (h, w // 2)), "YBR_FULL_422"))
    out = decode(data, "y.dcm")
    assert out.shape == (h, w, 3)
    r, g, b = (int(x) for x in out[5, 5])
    assert r > 200 and g < 128 and abs(b - 128) < 10


def test_dicom_without_pixels_and_no_phi_in_errors():
    with pytest.raises(DecodeError, match="no pixel data") as e:
        decode(to_bytes(header()), "x.dcm")
    assert not any(phi in str(e.value) for phi in PHI_FRAGMENTS)
