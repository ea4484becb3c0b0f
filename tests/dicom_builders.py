"""Synthetic DICOM files for the tests and benchmarks, written with pydicom (the peer library).

One builder so that every test writes the same, valid header: meta, SOP identity and
patient data that must never reach an output (PHI_FRAGMENTS), plus the image pixel
module for grey, RGB and YBR_FULL_422 data, one frame or many, 8 to 16 bits.
"""

from __future__ import annotations

import copy
import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, UltrasoundMultiFrameImageStorage, generate_uid

PHI = {"PatientName": "Doe^Jane", "PatientID": "MRN-998877", "InstitutionName": "St Elsewhere"}
# What a test looks for in outputs and messages: none of it may appear there.
PHI_FRAGMENTS = ("Doe", "MRN-998877", "Elsewhere")
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
UNITS_CM = 3  # PS3.3 C.8.5.5.1.15


def header(sop_class=UltrasoundImageStorage, syntax=ExplicitVRLittleEndian) -> Dataset:
    """Meta header, SOP identity and patient data; no pixels (a report, a plan, a broken image)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    return ds


def _layout(pixels: np.ndarray, photometric: str) -> tuple[int | None, int, int]:
    """(frames or None, rows, columns) of `pixels` as `with_pixels` documents them."""
    if photometric == "YBR_FULL_422":  # stored as Y0 Y1 Cb Cr per pair of pixels: two bytes a pixel
        frame_ndim, rows, cols = 2, pixels.shape[-2], pixels.shape[-1] // 2
    elif photometric in MONOCHROME:
        frame_ndim, (rows, cols) = 2, pixels.shape[-2:]
    else:
        frame_ndim, (rows, cols) = 3, pixels.shape[-3:-1]
    if pixels.ndim not in (frame_ndim, frame_ndim + 1):
        raise ValueError(f"{photometric} pixels of shape {pixels.shape}: expected {frame_ndim} axes, "
                         f"or {frame_ndim + 1} with frames first")
    return (pixels.shape[0] if pixels.ndim > frame_ndim else None), rows, cols


def with_pixels(ds: Dataset, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 8,
                signed: bool = False) -> Dataset:
    """`ds` with the image pixel module for `pixels`, uncompressed and interleaved.

    `pixels`: (rows, cols) for MONOCHROME1/2, (rows, cols, 3) for RGB and YBR_FULL,
    (rows, 2 * cols) for YBR_FULL_422 as scanners store it; a leading frame axis makes a
    multi-frame image (NumberOfFrames is then set, even to 1). `bits` is BitsStored.
    """
    frames, rows, cols = _layout(pixels, photometric)
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, cols
    color = photometric not in MONOCHROME
    ds.SamplesPerPixel, ds.PhotometricInterpretation = (3 if color else 1), photometric
    if color:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = (8 if bits == 8 else 16), bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = pixels.tobytes()
    return ds


def ultrasound(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 8, signed: bool = False,
               syntax=ExplicitVRLittleEndian) -> Dataset:
    """An ultrasound image (`with_pixels` for `pixels`); the multi-frame SOP class for a cine."""
    multi = _layout(pixels, photometric)[0] is not None
    ds = header(UltrasoundMultiFrameImageStorage if multi else UltrasoundImageStorage, syntax)
    ds.Modality = "US"
    return with_pixels(ds, pixels, photometric, bits, signed)


def region(x0: int, y0: int, x1: int, y1: int, data_type: int, spatial_format: int, units: int,
           dx: float, dy: float) -> Dataset:
    """One Sequence of Ultrasound Regions item; corners inclusive, as DICOM stores them."""
    r = Dataset()
    r.RegionLocationMinX0, r.RegionLocationMinY0, r.RegionLocationMaxX1, r.RegionLocationMaxY1 = x0, y0, x1, y1
    r.RegionDataType, r.RegionSpatialFormat, r.RegionFlags = data_type, spatial_format, 0
    r.PhysicalUnitsXDirection = r.PhysicalUnitsYDirection = units
    r.PhysicalDeltaX, r.PhysicalDeltaY = dx, dy
    return r


def to_bytes(ds: Dataset, part10: bool = True, compress_to=None) -> bytes:
    """The file: Part 10 (preamble and meta), or without them, implicit VR, as old archives store
    data sets. With `compress_to` (a transfer syntax UID), a compressed copy by pydicom's encoders."""
    if compress_to is not None:
        ds = copy.deepcopy(ds)
        ds.compress(compress_to)
    buf = io.BytesIO()
    if part10:
        ds.save_as(buf, enforce_file_format=True)
    else:
        ds.save_as(buf, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def cine_dicom(frames: np.ndarray, cm_per_px: float | None = 0.01, box=None) -> bytes:
    """A grey multi-frame ultrasound file; with `cm_per_px`, one tissue region in cm over `box`
    ((y0, x0, y1, x1), end-exclusive; the whole image by default)."""
    ds = ultrasound(frames)
    if cm_per_px:
        y0, x0, y1, x1 = box or (0, 0, frames.shape[1], frames.shape[2])
        ds.SequenceOfUltrasoundRegions = [region(x0, y0, x1 - 1, y1 - 1, 1, 1, UNITS_CM, cm_per_px, cm_per_px)]
    return to_bytes(ds)
