"""Image decoding: any supported file to one canonical form.

Canonical form: a C-contiguous `uint8` array of shape (H, W, 3), RGB. Ultrasound
is mostly grey, but colour overlays (Doppler, annotations) exist and ImageNet
backbones take three channels, so grey is replicated rather than special-cased.

Supported: PNG/JPEG/BMP/TIFF (8 and 16 bit; grey, RGB, RGBA, palette, CMYK) and
DICOM (single and multi-frame; MONOCHROME1/2, RGB, YBR_FULL, YBR_FULL_422).
Every failure is a `DecodeError` naming the file and the problem. DICOM header
values never appear in messages: they can carry patient data.
"""

from __future__ import annotations

import io
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FramePolicy = Literal["first", "middle", "all"]
MIN_SIDE = 16
MAX_PIXELS = 64_000_000  # 8000 x 8000; larger is no ultrasound frame


class DecodeError(ValueError):
    """A file could not be turned into an image; the message names the file."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


def is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _scale_to_uint8(a: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Map integer or float pixel data onto 0..255.

    Integer data is divided by its nominal range: `bits` when known (DICOM
    BitsStored), else the smallest of 8/10/12/14/16 bits that holds the maximum.
    Scaling by a nominal range, not by the image's own min/max, keeps the
    brightness of a hypoechoic nodule comparable between images.
    """
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "b":
        return a.astype(np.uint8) * 255
    if a.dtype.kind == "f":
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if lo >= 0 and hi <= 1:
            return np.round(np.nan_to_num(a) * 255).astype(np.uint8)
        rng = hi - lo if hi > lo else 1.0
        return np.round((np.nan_to_num(a, nan=lo) - lo) / rng * 255).astype(np.uint8)
    a = a.astype(np.int64)
    if a.min() < 0:
        a = a - a.min()
    if bits is None:
        peak = int(a.max())
        bits = next((b for b in (8, 10, 12, 14, 16) if peak < 2 ** b), 32)
    return np.clip(np.round(a * (255.0 / (2 ** bits - 1))), 0, 255).astype(np.uint8)


def to_rgb(a: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) array, any dtype -> (H, W, 3) uint8."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = _scale_to_uint8(a)
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = _scale_to_uint8(a[:, :, :3])
        return np.ascontiguousarray(a)
    raise ValueError(f"unsupported pixel array shape {a.shape}")


def _check_size(name: str, h: int, w: int) -> None:
    if min(h, w) < MIN_SIDE:
        raise DecodeError(name, f"image is {w}x{h}, smaller than {MIN_SIDE}px on a side")
    if h * w > MAX_PIXELS:
        raise DecodeError(name, f"image is {w}x{h}, larger than the {MAX_PIXELS:,}-pixel limit")


def _decode_pil(data: bytes, name: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # Size is checked below against our own limit; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            _check_size(name, im.height, im.width)  # before decoding any pixel
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode == "P" or mode == "PA":
                im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
                mode = im.mode
            if mode in ("RGBA", "LA"):
                # Ultrasound background is black: composite transparency onto black.
                bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(bg, im.convert("RGBA")).convert("RGB")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "1"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(name, "not a recognised image format (corrupt or wrong extension?)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DecodeError(name, f"cannot decode image: {e}") from None
    if arr.dtype == np.int32 or arr.dtype == np.uint16 or arr.dtype.kind == "f":
        arr = _scale_to_uint8(arr)
    return to_rgb(arr)


def _select_frames(n: int, policy: FramePolicy | int) -> list[int]:
    if policy == "all":
        return list(range(n))
    if policy == "first":
        return [0]
    if policy == "middle":
        return [n // 2]
    if isinstance(policy, int) and 0 <= policy < n:
        return [policy]
    raise ValueError(f"frame {policy!r} not available in {n} frame(s)")


def _decode_dicom(data: bytes, name: str, frames: FramePolicy | int) -> list[tuple[int, np.ndarray]]:
    import pydicom  # lazy: only DICOM users pay for the import

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as e:  # pydicom raises many types for broken files
        raise DecodeError(name, f"unreadable DICOM ({type(e).__name__})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DecodeError(name, "DICOM file has no pixel data")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_size(name, rows, cols)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        chosen = _select_frames(n, frames)
    except ValueError as e:
        raise DecodeError(name, str(e)) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(ds.get("BitsStored", 8) or 8)
    try:
        # pydicom >= 3 converts YBR_FULL / YBR_FULL_422 to RGB (as_rgb=True default).
        from pydicom.pixels import pixel_array
        out = []
        for i in chosen:
            a = pixel_array(ds, index=i if n > 1 else None)
            out.append((i, a))
    except Exception as e:
        raise DecodeError(name, f"cannot decode DICOM pixel data ({type(e).__name__}: {e})") from None
    result = []
    for i, a in out:
        if a.ndim == 2:
            if a.dtype != np.uint8:
                a = _scale_to_uint8(a, bits if a.dtype.kind in "iu" else None)
            if photometric == "MONOCHROME1":  # 0 means white
                a = 255 - a
        result.append((i, to_rgb(a)))
    return result


def decode_frames(data: bytes, name: str, frames: FramePolicy | int = "first") -> list[tuple[int, np.ndarray]]:
    """Decode bytes into [(frame_index, HxWx3 uint8)]; raises DecodeError naming `name`."""
    if len(data) == 0:
        raise DecodeError(name, "file is empty (0 bytes)")
    if is_dicom(data):
        return _decode_dicom(data, name, frames)
    return [(0, _decode_pil(data, name))]


def decode(data: bytes, name: str, frame: Literal["first", "middle"] | int = "first") -> np.ndarray:
    """Decode one image (one frame of a DICOM)."""
    return decode_frames(data, name, frame)[0][1]


def read_image(path: str, frame: Literal["first", "middle"] | int = "first") -> np.ndarray:
    """Read a local path or fsspec URI and decode it."""
    from thyro.storage import read_bytes

    try:
        data = read_bytes(path)
    except FileNotFoundError:
        raise DecodeError(path, "file not found") from None
    except IsADirectoryError:
        raise DecodeError(path, "is a directory, not an image") from None
    return decode(data, path, frame)
