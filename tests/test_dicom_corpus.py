"""pydicom's own test files (the ones inside its wheel), each with its expected outcome.

Outcomes: ("ok", frames) decoded with frames="all"; ("error", phrase) a DecodeError
whose problem contains the phrase; ("skipped", kind) a NotAnImageError of that kind.
"""

import importlib.util
import os
import warnings

import pytest

from thyro.data.decode import DecodeError, NotAnImageError, decode_frames

pydicom = pytest.importorskip("pydicom")
ROOT = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
if not os.path.isdir(ROOT):
    pytest.skip("pydicom's wheel has no test_files folder", allow_module_level=True)

HAS_LIBJPEG = importlib.util.find_spec("libjpeg") is not None  # the GPL-3 "jpeg12" extra

# Broken on purpose in pydicom's corpus; no decoder reads them (pydicom's own tests expect failures).
CORRUPT = {
    "JPEG-lossy.dcm": "'JPEG Extended (Process 2 and 4)' (1.2.840.10008.1.2.4.51)",  # invalid SOS (Ss/Se)
    "JPEG2000-embedded-sequence-delimiter.dcm": "'JPEG 2000 Image Compression' (1.2.840.10008.1.2.4.91)",
    "MR_truncated.dcm": "less than expected",
}
NOT_AN_IMAGE_FILE = "not a recognised image format"
TINY = "smaller than 16px"

EXPECTED = {
    "693_J2KI.dcm": ("ok", 1),
    "CT_small.dcm": ("ok", 1),
    "ExplVR_BigEnd.dcm": ("ok", 1),
    "GDCMJ2K_TextGBR.dcm": ("ok", 1),
    "J2K_pixelrep_mismatch.dcm": ("ok", 1),
    "JPEG2000.dcm": ("ok", 1),
    "MR_small.dcm": ("ok", 1),
    "MR_small_RLE.dcm": ("ok", 1),
    "MR_small_bigendian.dcm": ("ok", 1),
    "MR_small_expb.dcm": ("ok", 1),
    "MR_small_implicit.dcm": ("ok", 1),
    "MR_small_jp2klossless.dcm": ("ok", 1),
    "MR_small_jpeg_ls_lossless.dcm": ("ok", 1),
    "MR_small_padded.dcm": ("ok", 1),
    "SC_jpeg_no_color_transform.dcm": ("ok", 1),
    "SC_jpeg_no_color_transform_2.dcm": ("ok", 1),
    "SC_rgb_dcmtk_+eb+cr.dcm": ("ok", 1),
    "SC_rgb_dcmtk_+eb+cy+n1.dcm": ("ok", 1),
    "SC_rgb_dcmtk_+eb+cy+n2.dcm": ("ok", 1),
    "SC_rgb_dcmtk_+eb+cy+np.dcm": ("ok", 1),
    "SC_rgb_dcmtk_+eb+cy+s2.dcm": ("ok", 1),
    "SC_rgb_dcmtk_+eb+cy+s4.dcm": ("ok", 1),
    "SC_rgb_gdcm_KY.dcm": ("ok", 1),
    "SC_rgb_jls_lossy_line.dcm": ("ok", 1),
    "SC_rgb_jls_lossy_sample.dcm": ("ok", 1),
    "SC_rgb_jpeg.dcm": ("ok", 1),
    "SC_rgb_jpeg_app14_dcmd.dcm": ("ok", 1),
    "SC_rgb_jpeg_dcmd.dcm": ("ok", 1),
    "SC_rgb_jpeg_dcmtk.dcm": ("ok", 1),
    "SC_rgb_jpeg_gdcm.dcm": ("ok", 1),
    "SC_rgb_jpeg_lossy_gdcm.dcm": ("ok", 1),
    "SC_rgb_rle.dcm": ("ok", 1),
    "SC_rgb_rle_16bit.dcm": ("ok", 1),
    "SC_rgb_rle_16bit_2frame.dcm": ("ok", 2),
    "SC_rgb_rle_2frame.dcm": ("ok", 2),
    "SC_rgb_rle_32bit.dcm": ("ok", 1),
    "SC_rgb_rle_32bit_2frame.dcm": ("ok", 2),
    "SC_ybr_full_422_uncompressed.dcm": ("ok", 1),
    "examples_jpeg2k.dcm": ("ok", 1),
    "examples_overlay.dcm": ("ok", 1),
    "examples_palette.dcm": ("ok", 1),
    "examples_rgb_color.dcm": ("ok", 1),
    "examples_ybr_color.dcm": ("ok", 30),
    "image_dfl.dcm": ("ok", 1),
    "dicomdirtests/77654033/CR1/6154": ("ok", 1),
    "dicomdirtests/77654033/CR2/6247": ("ok", 1),
    "dicomdirtests/77654033/CR3/6278": ("ok", 1),
    "dicomdirtests/77654033/CT2/17106": ("ok", 1),
    "dicomdirtests/77654033/CT2/17136": ("ok", 1),
    "dicomdirtests/77654033/CT2/17166": ("ok", 1),
    "dicomdirtests/77654033/CT2/17196": ("ok", 1),
    "dicomdirtests/98892001/CT2N/6293": ("ok", 1),
    "dicomdirtests/98892001/CT2N/6924": ("ok", 1),
    "dicomdirtests/98892001/CT5N/2062": ("ok", 1),
    "dicomdirtests/98892001/CT5N/2392": ("ok", 1),
    "dicomdirtests/98892001/CT5N/2693": ("ok", 1),
    "dicomdirtests/98892001/CT5N/3023": ("ok", 1),
    "dicomdirtests/98892001/CT5N/3353": ("ok", 1),
    "dicomdirtests/98892003/MR1/15820": ("ok", 1),
    "dicomdirtests/98892003/MR1/4919": ("ok", 1),
    "dicomdirtests/98892003/MR1/5641": ("ok", 1),
    "dicomdirtests/98892003/MR2/15970": ("ok", 1),
    "dicomdirtests/98892003/MR2/4950": ("ok", 1),
    "dicomdirtests/98892003/MR2/4981": ("ok", 1),
    "dicomdirtests/98892003/MR2/5011": ("ok", 1),
    "dicomdirtests/98892003/MR2/6273": ("ok", 1),
    "dicomdirtests/98892003/MR2/6605": ("ok", 1),
    "dicomdirtests/98892003/MR2/6935": ("ok", 1),
    "dicomdirtests/98892003/MR700/4467": ("ok", 1),
    "dicomdirtests/98892003/MR700/4528": ("ok", 1),
    "dicomdirtests/98892003/MR700/4558": ("ok", 1),
    "dicomdirtests/98892003/MR700/4588": ("ok", 1),
    "dicomdirtests/98892003/MR700/4618": ("ok", 1),
    "dicomdirtests/98892003/MR700/4648": ("ok", 1),
    "dicomdirtests/98892003/MR700/4678": ("ok", 1),
    "JPGExtended.dcm": ("ok", 1) if HAS_LIBJPEG else ("error", "'JPEG Extended (Process 2 and 4)' (1.2.840.10008.1.2.4.51)"),
    **{name: ("error", phrase) for name, phrase in CORRUPT.items()},
    "JPEGLSNearLossless_08.dcm": ("error", TINY),
    "JPEGLSNearLossless_16.dcm": ("error", TINY),
    "SC_rgb_small_odd.dcm": ("error", TINY),
    "SC_rgb_small_odd_big_endian.dcm": ("error", TINY),
    "SC_rgb_small_odd_jpeg.dcm": ("error", TINY),
    "meta_missing_tsyntax.dcm": ("error", "image is 0x0"),
    "nested_priv_SQ.dcm": ("error", "image is 0x0"),
    "UN_sequence.dcm": ("error", "no pixel data"),
    "empty_charset_LEI.dcm": ("error", "no pixel data"),
    "no_meta_group_length.dcm": ("error", "no pixel data"),
    "priv_SQ.dcm": ("error", "no pixel data"),
    "no_meta.dcm": ("error", NOT_AN_IMAGE_FILE),  # starts with a stray byte: not even pydicom reads past it
    "README.txt": ("error", NOT_AN_IMAGE_FILE),
    "crayons.icc": ("error", NOT_AN_IMAGE_FILE),
    "rtplan.dump": ("error", NOT_AN_IMAGE_FILE),
    "rtstruct.dump": ("error", NOT_AN_IMAGE_FILE),
    "test1.json": ("error", NOT_AN_IMAGE_FILE),
    "test_PN.json": ("error", NOT_AN_IMAGE_FILE),
    "zipMR.gz": ("error", NOT_AN_IMAGE_FILE),
    "dicomdirtests/README.txt": ("error", NOT_AN_IMAGE_FILE),
    "dicomdirtests/TINY_ALPHA/README": ("error", NOT_AN_IMAGE_FILE),
    "ExplVR_BigEndNoMeta.dcm": ("skipped", "RT Ion Plan Storage"),  # no preamble, no meta
    "ExplVR_LitEndNoMeta.dcm": ("skipped", "RT Ion Plan Storage"),
    "rtstruct.dcm": ("skipped", "RT Structure Set Storage"),  # no preamble
    "badVR.dcm": ("skipped", "RT Dose Storage"),
    **{f"rtdose{s}.dcm": ("skipped", "RT Dose Storage")
       for s in ("", "_1frame", "_expb", "_expb_1frame", "_rle", "_rle_1frame")},
    "rtplan.dcm": ("skipped", "RT Plan Storage"),
    "rtplan_truncated.dcm": ("skipped", "RT Plan Storage"),
    "liver_1frame.dcm": ("skipped", "Segmentation Storage"),
    "liver_expb_1frame.dcm": ("skipped", "Segmentation Storage"),
    "reportsi.dcm": ("skipped", "Basic Text SR Storage"),
    "reportsi_with_empty_number_tags.dcm": ("skipped", "Basic Text SR Storage"),
    "test-SR.dcm": ("skipped", "Comprehensive SR Storage"),
    "waveform_ecg.dcm": ("skipped", "12-lead ECG Waveform Storage"),
    **{f"dicomdirtests/{d}": ("skipped", "DICOMDIR")
       for d in ("DICOMDIR", "DICOMDIR-bigEnd", "DICOMDIR-empty.dcm", "DICOMDIR-implicit", "DICOMDIR-nooffset",
                 "DICOMDIR-nopatient", "DICOMDIR-reordered", "TINY_ALPHA/DICOMDIR")},
}
# TINY_ALPHA's instances are DICOMDIR test fodder with the pixel data stripped.
TINY_ALPHA_INSTANCES = ("dicomdirtests/TINY_ALPHA/PT000000/", ("error", "no pixel data"))


def _wheel_files() -> list[str]:
    out = []
    for dirpath, dirs, files in os.walk(ROOT):
        dirs.sort()
        out += sorted(os.path.relpath(os.path.join(dirpath, f), ROOT).replace(os.sep, "/") for f in files)
    return out


def _expected(rel: str):
    if rel.startswith(TINY_ALPHA_INSTANCES[0]):
        return TINY_ALPHA_INSTANCES[1]
    return EXPECTED.get(rel)


def _outcome(rel: str):
    with open(os.path.join(ROOT, rel), "rb") as f:
        data = f.read()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return "ok", decode_frames(data, rel, "all")
        except NotAnImageError as e:
            return "skipped", e
        except DecodeError as e:
            return "error", e


def test_every_wheel_file_has_an_expectation():
    missing = [rel for rel in _wheel_files() if _expected(rel) is None]
    assert not missing, f"new files in pydicom's wheel, add them to the table: {missing}"


@pytest.mark.parametrize("rel", _wheel_files())
def test_outcome_matches_the_table(rel):
    status, want = _expected(rel) or ("?", None)
    got, detail = _outcome(rel)
    assert got == status, f"{rel}: {got} ({detail})"
    if status == "ok":
        assert len(detail) == want
    elif status == "skipped":
        assert detail.kind == want
    else:
        assert want in detail.problem and rel in str(detail)


def _image_bearing_supported() -> list[str]:
    """Files pydicom itself calls images we can decode: pixel data, >= 16 px, an image SOP class,
    a syntax whose decoder is installed, not corrupt on purpose."""
    from pydicom.pixels import get_decoder

    from thyro.data.dicom import is_non_image_sop_class, sop_class

    out = []
    for rel in _wheel_files():
        if os.path.basename(rel) in CORRUPT:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(os.path.join(ROOT, rel), force=True)
            ts = ds.file_meta.TransferSyntaxUID
            decodable = get_decoder(ts).is_available
        except Exception:
            continue
        sop = sop_class(ds)
        if ("PixelData" in ds and decodable and min(int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)) >= 16
                and not (sop and is_non_image_sop_class(sop)) and "DirectoryRecordSequence" not in ds):
            out.append(rel)
    return out


def test_no_image_of_a_supported_syntax_becomes_an_error():
    files = _image_bearing_supported()
    assert len(files) >= 70  # the oracle itself must find the corpus
    for rel in files:
        ds = pydicom.dcmread(os.path.join(ROOT, rel), stop_before_pixels=True, force=True)
        got, detail = _outcome(rel)
        assert got == "ok", f"{rel} ({ds.file_meta.TransferSyntaxUID.name}): {detail}"
        assert len(detail) == int(ds.get("NumberOfFrames") or 1)
        assert all(img.shape == (ds.Rows, ds.Columns, 3) for _, img in detail)
