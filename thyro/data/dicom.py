"""DICOM as archives hold it: decoding, intensity mapping, ultrasound regions.

`thyro.data.decode` is the entry point and imports this module only for DICOM
input, so PNG-only users never pay for importing pydicom.

Messages name the transfer syntax and SOP class (public UIDs, never patient
data); no other header value is ever put in an error.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, MediaStorageDirectoryStorage,
)

from thyro.data.decode import DecodeError, NotAnImageError, check_size, scale_to_uint8, select_frames, to_rgb

# PS3.3 C.8.5.5.1.2 Region Data Type; codes not listed here (reserved, private) become "other".
REGION_DATA_TYPES = {
    0: "none", 1: "tissue", 2: "color_flow", 3: "pw_spectral", 4: "cw_spectral", 5: "doppler_mean_trace",
    6: "doppler_mode_trace", 7: "doppler_max_trace", 8: "volume_trace", 10: "ecg_trace", 11: "pulse_trace",
    12: "phonocardiogram_trace", 13: "gray_bar", 14: "color_bar", 15: "integrated_backscatter",
    16: "area_trace", 17: "d_area_dt", 18: "other_physiological",
}
UNITS_CM = 3  # PS3.3 C.8.5.5.1.15 Physical Units X/Y Direction


@dataclass(frozen=True)
class UltrasoundRegion:
    """One item of the Sequence of Ultrasound Regions (0018,6011).

    `box` is (y0, x0, y1, x1) in pixels, end-exclusive (DICOM stores inclusive
    corners). mm per pixel is only given when the region's units are cm.
    """

    box: tuple[int, int, int, int]
    data_type: str
    data_type_code: int
    spatial_format: int
    mm_per_pixel_x: float | None
    mm_per_pixel_y: float | None


def _read(data: bytes, name: str) -> Dataset:
    if data[:4] == b"DICM":  # preamble dropped but magic kept: restore what pydicom expects
        data = bytes(128) + data
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as e:  # pydicom raises many types for broken files
        raise DecodeError(name, f"unreadable DICOM ({type(e).__name__})") from None
    if "TransferSyntaxUID" not in ds.get("file_meta", Dataset()):
        # No meta header: the encoding pydicom detected while reading is the only syntax there is.
        implicit, little = ds.original_encoding
        if implicit is not None:
            ds.file_meta = ds.get("file_meta") or FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds


def _uid_label(uid: UID | str) -> str:
    uid = UID(str(uid))
    return f"'{uid.name}' ({uid})" if uid.name != str(uid) else f"({uid})"


def sop_class(ds: Dataset) -> UID | None:
    uid = ds.get("SOPClassUID") or ds.get("file_meta", Dataset()).get("MediaStorageSOPClassUID")
    return UID(str(uid)) if uid else None


def is_non_image_sop_class(uid: UID) -> bool:
    """SOP classes whose instances are not pictures of anatomy: reports, plans, overlays, signals."""
    kw = uid.keyword
    return bool(kw) and (
        kw.endswith("SRStorage") or "PresentationState" in kw or (kw.startswith("RT") and kw != "RTImageStorage") or "Waveform" in kw
        or kw.startswith("Encapsulated") or "Registration" in kw or "Segmentation" in kw
        or kw in {"KeyObjectSelectionDocumentStorage", "RawDataStorage", "MRSpectroscopyStorage",
                  "BasicStructuredDisplayStorage", "HangingProtocolStorage", "ColorPaletteStorage",
                  "StereometricRelationshipStorage", "MediaStorageDirectoryStorage"})


def _refuse_non_images(ds: Dataset, name: str) -> None:
    sop = sop_class(ds)
    if sop == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        raise NotAnImageError(name, "DICOMDIR", "a DICOMDIR is an index of other files, not an image")
    if sop is not None and is_non_image_sop_class(sop):
        raise NotAnImageError(name, sop.name, f"not an image: SOP class {_uid_label(sop)}")


def parse_regions(ds: Dataset) -> list[UltrasoundRegion]:
    """The scanner's own regions; items without a complete location are skipped."""
    out = []
    for item in ds.get("SequenceOfUltrasoundRegions", []) or []:
        try:
            x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
            x1, y1 = int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)
        except (AttributeError, TypeError, ValueError):
            continue
        code = int(item.get("RegionDataType", 0) or 0)

        def mm(units_kw: str, delta_kw: str) -> float | None:
            units, delta = item.get(units_kw), item.get(delta_kw)
            return float(delta) * 10.0 if units == UNITS_CM and delta is not None else None

        out.append(UltrasoundRegion(
            box=(y0, x0, y1 + 1, x1 + 1), data_type=REGION_DATA_TYPES.get(code, "other"), data_type_code=code,
            spatial_format=int(item.get("RegionSpatialFormat", 0) or 0),
            mm_per_pixel_x=mm("PhysicalUnitsXDirection", "PhysicalDeltaX"),
            mm_per_pixel_y=mm("PhysicalUnitsYDirection", "PhysicalDeltaY")))
    return out


def _first(value) -> float:
    return float(value[0]) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else float(value)


def window_unit(a: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Grey values through the data set's VOI (VOI LUT or first window) onto 0..1; None when it has none.

    Windows are in modality units (e.g. HU), so the modality rescale is applied first.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi

    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return apply_voi(apply_modality_lut(a, ds), ds).astype(np.float64) / (2 ** bits - 1)
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
    func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    x = apply_modality_lut(a, ds).astype(np.float64)
    if func == "SIGMOID" and w > 0:
        return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if func == "LINEAR_EXACT" and w > 0:
        return np.clip((x - c) / w + 0.5, 0.0, 1.0)
    if w < 1:
        return None  # invalid window: fall back to BitsStored rather than refuse the image
    # PS3.3 C.11.2.1.2.1 LINEAR, output range 0..1
    return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)


def _to_uint8(a: np.ndarray, ds: Dataset, bits: int, photometric: str) -> np.ndarray:
    """One mapping per data set: the VOI where present (above 8 bits), else BitsStored."""
    if photometric == "PALETTE COLOR" and a.ndim == 2:
        from pydicom.pixels import apply_color_lut

        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return scale_to_uint8(apply_color_lut(a, ds), lut_bits)
    if a.ndim == 2 and photometric.startswith("MONOCHROME"):
        unit = window_unit(a, ds) if bits > 8 else None
        out = np.round(unit * 255).astype(np.uint8) if unit is not None else scale_to_uint8(a, bits)
        return 255 - out if photometric == "MONOCHROME1" else out  # MONOCHROME1: 0 means white
    return scale_to_uint8(a, bits if a.dtype.kind in "iu" else None)


def _decoder_problem(ds: Dataset) -> str | None:
    """Why this data set's pixels cannot be decoded here, before trying; None when they can."""
    from pydicom.pixels import get_decoder

    ts = ds.get("file_meta", Dataset()).get("TransferSyntaxUID")
    if ts is None:
        return None  # pydicom guesses; a failure is reported when decoding
    ts = UID(str(ts))
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return f"transfer syntax {_uid_label(ts)} is not supported (no pixel data decoder exists for it)"
    if not decoder.is_available:
        return f"transfer syntax {_uid_label(ts)} cannot be decoded: no decoder plugin is installed for it"
    return None


def _syntax(ds: Dataset) -> str:
    ts = ds.get("file_meta", Dataset()).get("TransferSyntaxUID")
    return _uid_label(ts) if ts else "(no transfer syntax in the file meta)"


def decode_dataset(data: bytes, name: str, frames, frame_step: int = 1, max_frames: int = 0):
    """(frames, regions, bits) of a DICOM file; see `thyro.data.decode.decode_image`."""
    from pydicom.pixels import pixel_array

    ds = _read(data, name)
    _refuse_non_images(ds, name)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DecodeError(name, "DICOM file has no pixel data")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    check_size(name, rows, cols)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        chosen = select_frames(n, frames, frame_step, max_frames)
    except ValueError as e:
        raise DecodeError(name, str(e)) from None
    problem = _decoder_problem(ds)
    if problem:
        raise DecodeError(name, problem)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(ds.get("BitsStored", 8) or 8)
    out = []
    try:
        # pydicom >= 3 converts YBR_FULL / YBR_FULL_422 / YBR_RCT / YBR_ICT to RGB (as_rgb=True default).
        # pixel_array(ds, index=...) rather than iter_pixels: the latter miscounts the bytes of an
        # uncompressed YBR_FULL_422 multi-frame (subsampled chroma), as ultrasound scanners write it.
        for i in chosen:
            a = pixel_array(ds, index=i if n > 1 else None)
            out.append((i, to_rgb(_to_uint8(a, ds, bits, photometric))))
    except Exception as e:
        detail = " ".join(str(e).split())[:300]
        raise DecodeError(name, f"cannot decode {_syntax(ds)} pixel data ({type(e).__name__}: {detail})") from None
    return out, parse_regions(ds), bits
