"""Image decoding: any supported file to one canonical form.

Canonical form: a C-contiguous `uint8` array of shape (H, W, 3), RGB. Ultrasound
is mostly grey, but colour overlays (Doppler, annotations) exist and ImageNet
backbones take three channels, so grey is replicated rather than special-cased.

Supported: PNG/JPEG/BMP/TIFF (8 and 16 bit; grey, RGB, RGBA, palette, CMYK) and
DICOM (single and multi-frame, see `thyro.data.dicom`). Every failure is a
`DecodeError` naming the file and the problem; files that are valid but hold
no picture (DICOMDIR, reports, plans) raise its subclass `NotAnImageError`.
DICOM header values never appear in messages: they can carry patient data.

Intensity: more than 8 bits are mapped onto 0..255 by one rule per data set
(DICOM window, or the nominal range of the bit depth), never by an image's
own maximum, so one bright pixel cannot darken a whole image.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from thyro.data.dicom import UltrasoundRegion

FramePolicy = Literal["first", "middle", "all"]
MIN_SIDE = 16
MAX_PIXELS = 64_000_000  # 8000 x 8000; larger is no ultrasound frame

# Elements that can open a data set written without preamble and meta header:
# group 0002 (meta) or 0008 (identification), in either byte order.
_FIRST_GROUPS = (0x0002, 0x0008)
_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD",
        b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI",
        b"UL", b"UN", b"UR", b"US", b"UT", b"UV"}


class DecodeError(ValueError):
    """A file could not be turned into an image; the message names the file."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


class NotAnImageError(DecodeError):
    """A valid file that holds no image (DICOMDIR, SR, RT, presentation state...).

    `kind` says what it is ("DICOMDIR" or the SOP class name); scoring skips these.
    """

    def __init__(self, name: str, kind: str, problem: str | None = None):
        super().__init__(name, problem or f"not an image ({kind})")
        self.kind = kind


@dataclass
class DecodedImage:
    frames: list[tuple[int, np.ndarray]]          # (frame index, HxWx3 uint8)
    regions: list["UltrasoundRegion"] = field(default_factory=list)  # DICOM ultrasound regions
    source: Literal["dicom", "image"] = "image"
    bits: int | None = None                      # bits per sample before mapping to 8
    # (H, W) of the file's image when the frames were decoded smaller (JPEG's DCT scaling,
    # `min_side`); None: the frames are the image's full size. Geometry is reported in it.
    full_shape: tuple[int, int] | None = None


def is_dicom(data: bytes) -> bool:
    """True for Part 10 files, and for bare data sets without the 128-byte preamble."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    if data[:4] == b"DICM":
        return True
    if len(data) < 8:
        return False
    for order in "<>":
        group, _elem = struct.unpack(order + "HH", data[:4])
        if group in _FIRST_GROUPS:
            if data[4:6] in _VRS:
                return True  # explicit VR
            (length,) = struct.unpack(order + "I", data[4:8])
            if length < min(len(data), 1 << 16):
                return True  # implicit VR with a plausible first length
    return False


def __getattr__(name: str):
    # Re-exported lazily: importing thyro.data.dicom imports pydicom.
    if name == "UltrasoundRegion":
        from thyro.data.dicom import UltrasoundRegion

        return UltrasoundRegion
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def scale_to_uint8(a: np.ndarray, bits: int | None = None, signed: bool | None = None) -> np.ndarray:
    """Map integer or float pixel data onto 0..255.

    Integer data is divided by its nominal range: `bits` when known (DICOM
    BitsStored, a configured bit depth), else its dtype's range. Signed data
    (`signed`, default: the dtype's) is offset by 2^(bits-1) first. Never the
    image's own min/max: that would make a hypoechoic nodule's brightness
    depend on one bright pixel elsewhere. Float data has no nominal range:
    [0, 1] is taken as is, else its min/max.
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
    signed = a.dtype.kind == "i" if signed is None else signed
    bits = bits or a.dtype.itemsize * 8
    a = a.astype(np.int64)
    if signed:
        a = a + 2 ** (bits - 1)
    return np.clip(np.round(a * (255.0 / (2 ** bits - 1))), 0, 255).astype(np.uint8)


def to_rgb(a: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) array, any dtype -> (H, W, 3) uint8."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = scale_to_uint8(a)
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = scale_to_uint8(a[:, :, :3])
        return np.ascontiguousarray(a)
    raise ValueError(f"unsupported pixel array shape {a.shape}")


def check_size(name: str, h: int, w: int) -> None:
    if min(h, w) < MIN_SIDE:
        raise DecodeError(name, f"image is {w}x{h}, smaller than {MIN_SIDE}px on a side")
    if h * w > MAX_PIXELS:
        raise DecodeError(name, f"image is {w}x{h}, larger than the {MAX_PIXELS:,}-pixel limit")


def _pil_int_format(im: Image.Image) -> tuple[int, bool]:
    """(bits, signed) of a PIL integer image: PIL widens 16-bit signed and 32-bit TIFFs to "I"."""
    if im.mode.startswith("I;16"):
        return 16, im.mode.endswith("S")
    tags = getattr(im, "tag_v2", {})
    bits = tags.get(258, 32)  # BitsPerSample
    bits = int(bits[0] if isinstance(bits, tuple) else bits)
    fmt = tags.get(339, 1)  # SampleFormat: 1 unsigned, 2 signed
    return bits, int(fmt[0] if isinstance(fmt, tuple) else fmt) == 2


def jpeg_scale(h: int, w: int, min_side: int | None, min_long_side: int = 0) -> int:
    """The largest JPEG DCT-domain reduction (8, 4, 2, else 1) that keeps the smaller side >= min_side
    and the longer side >= min_long_side."""
    if not min_side:
        return 1
    return next((s for s in (8, 4, 2) if min(h, w) // s >= min_side and max(h, w) // s >= min_long_side), 1)


def _decode_pil(data: bytes, name: str, bit_depth: int | None = None, min_side: int | None = None,
                min_long_side: int = 0) -> tuple[np.ndarray, int | None, tuple[int, int] | None]:
    full = None
    try:
        with warnings.catch_warnings():
            # Size is checked below against our own limit; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            check_size(name, im.height, im.width)  # before decoding any pixel
            bits, signed = _pil_int_format(im) if im.mode.startswith("I") else (None, False)
            k = jpeg_scale(im.height, im.width, min_side, min_long_side) if im.format == "JPEG" else 1
            if k > 1:
                # libjpeg scales in the DCT domain: 1/k of the pixels decoded, not decoded and dropped.
                size = im.size
                im.draft(None, (im.width // k, im.height // k))
                if im.size != size:
                    full = size
            im = ImageOps.exif_transpose(im)
            if full is not None and (im.size[0] > im.size[1]) != (full[0] > full[1]):
                full = full[::-1]  # EXIF turned the picture a quarter
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
    if arr.dtype.kind in "iu" and arr.dtype != np.uint8:
        # A configured depth says e.g. "12-bit data in 16-bit PNGs" for a whole archive.
        bits = bit_depth or bits
        arr = scale_to_uint8(arr, bits, signed)
    elif arr.dtype.kind == "f":
        arr = scale_to_uint8(arr)
    else:
        bits = 8 if arr.dtype == np.uint8 else bits
    return to_rgb(arr), bits, None if full is None else (full[1], full[0])


def select_frames(n: int, policy: FramePolicy | int, frame_step: int = 1, max_frames: int = 0) -> list[int]:
    """Frame indices to decode out of `n`; `frame_step` / `max_frames` sample the "all" policy."""
    if policy == "all":
        if frame_step < 1 or max_frames < 0:
            raise ValueError(f"frame_step must be >= 1 and max_frames >= 0 (got {frame_step}, {max_frames})")
        chosen = list(range(0, n, frame_step))
        if 0 < max_frames < len(chosen):
            # Evenly spaced over the whole clip, first frame included.
            chosen = [chosen[j] for j in np.round(np.linspace(0, len(chosen) - 1, max_frames)).astype(int)]
        return chosen
    if policy == "first":
        return [0]
    if policy == "middle":
        return [n // 2]
    if isinstance(policy, int) and not isinstance(policy, bool) and 0 <= policy < n:
        return [policy]
    raise ValueError(f"frame {policy!r} not available in {n} frame(s)")


def decode_image(data: bytes, name: str, frames: FramePolicy | int = "first", frame_step: int = 1,
                 max_frames: int = 0, *, bit_depth: int | None = None, min_side: int | None = None,
                 min_long_side: int = 0) -> DecodedImage:
    """Decode bytes into frames plus what the file says about them; raises DecodeError naming `name`.

    A plain image is one frame, whatever the frame policy (mixed archives share one policy).

    `bit_depth` fixes the nominal range of integer PNG/TIFF data (e.g. 12 for
    12-bit data stored in 16-bit PNGs); DICOM files carry their own.
    `min_side`: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (`jpeg_scale`) as long as
    its smaller side keeps this many pixels (and its longer side `min_long_side`);
    `full_shape` then gives the image's own size.
    DICOM, PNG and the rest always decode at full size.
    """
    if len(data) == 0:
        raise DecodeError(name, "file is empty (0 bytes)")
    if is_dicom(data):
        from thyro.data.dicom import decode_dataset  # lazy: only DICOM users pay for importing pydicom

        frames_, regions, bits = decode_dataset(data, name, frames, frame_step, max_frames)
        return DecodedImage(frames_, regions, "dicom", bits)
    img, bits, full = _decode_pil(data, name, bit_depth, min_side, min_long_side)
    return DecodedImage([(0, img)], [], "image", bits, full)


def decode_frames(data: bytes, name: str, frames: FramePolicy | int = "first", frame_step: int = 1,
                  max_frames: int = 0, *, bit_depth: int | None = None) -> list[tuple[int, np.ndarray]]:
    """Decode bytes into [(frame_index, HxWx3 uint8)]; raises DecodeError naming `name`."""
    return decode_image(data, name, frames, frame_step, max_frames, bit_depth=bit_depth).frames


def decode(data: bytes, name: str, frame: Literal["first", "middle"] | int = "first", *,
           bit_depth: int | None = None) -> np.ndarray:
    """Decode one image (one frame of a DICOM)."""
    return decode_frames(data, name, frame, bit_depth=bit_depth)[0][1]


def read_source(path: str) -> bytes:
    """The bytes of a local path or fsspec URI; a missing file is a DecodeError naming it."""
    from thyro.data.storage import read_bytes

    try:
        return read_bytes(path)
    except FileNotFoundError:
        raise DecodeError(path, "file not found") from None
    except IsADirectoryError:
        raise DecodeError(path, "is a directory, not an image") from None


def read_image(path: str, frame: Literal["first", "middle"] | int = "first") -> np.ndarray:
    """Read a local path or fsspec URI and decode it."""
    return decode(read_source(path), path, frame)
