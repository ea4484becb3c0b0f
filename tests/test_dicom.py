"""DICOM as archives hold it: regions, cine sampling, intensity mapping, non-images, bare data sets."""

import io

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    BasicTextSRStorage, GrayscaleSoftcopyPresentationStateStorage, ImplicitVRLittleEndian, MPEG2MPML,
    RTPlanStorage, generate_uid,
)

from tests.dicom_builders import PHI_FRAGMENTS, UNITS_CM, header, region, to_bytes, ultrasound
from thyro.data.decode import DecodeError, NotAnImageError, decode, decode_frames, decode_image, is_dicom
from thyro.data.sources import discover, read_item


def test_ultrasound_regions_parse_to_boxes_types_and_mm():
    ds = ultrasound(np.zeros((120, 160), np.uint8))
    # A B-mode sector (tissue, cm) and a colour box inside it; a PW strip in cm/s x seconds.
    ds.SequenceOfUltrasoundRegions = [region(10, 20, 149, 99, 1, 1, UNITS_CM, 0.0125, 0.025),
                                      region(40, 30, 79, 69, 2, 1, UNITS_CM, 0.0125, 0.025),
                                      region(0, 100, 159, 119, 3, 3, 7, 0.5, 0.01)]
    tissue, flow, pw = decode_image(to_bytes(ds), "r.dcm").regions
    assert tissue.box == (20, 10, 100, 150)  # DICOM max corners are inclusive
    assert (tissue.data_type, tissue.data_type_code, tissue.spatial_format) == ("tissue", 1, 1)
    assert tissue.mm_per_pixel_x == pytest.approx(0.125) and tissue.mm_per_pixel_y == pytest.approx(0.25)
    assert flow.box == (30, 40, 70, 80) and (flow.data_type, flow.data_type_code) == ("color_flow", 2)
    assert pw.data_type == "pw_spectral" and pw.mm_per_pixel_x is None and pw.mm_per_pixel_y is None


def test_no_regions_is_an_empty_list_and_pngs_say_image():
    d = decode_image(to_bytes(ultrasound(np.zeros((32, 32), np.uint8))), "n.dcm")
    assert d.regions == [] and d.source == "dicom" and d.bits == 8


def _cine(n: int = 300) -> bytes:
    frames = (np.arange(n, dtype=np.uint16) % 256).astype(np.uint8)[:, None, None] * np.ones((1, 16, 24), np.uint8)
    return to_bytes(ultrasound(frames))


def test_cine_at_most_n_frames_evenly_spaced_from_the_first():
    got = decode_frames(_cine(), "cine.dcm", "all", max_frames=10)
    expected = [round(j * 299 / 9) for j in range(10)]  # 0, 33, ..., 299
    assert [i for i, _ in got] == expected
    assert all(int(img[0, 0, 0]) == i % 256 for i, img in got)  # each is the frame it claims to be


def test_cine_every_kth_frame():
    got = decode_frames(_cine(), "cine.dcm", "all", frame_step=7)
    assert [i for i, _ in got] == list(range(0, 300, 7))


def test_bad_sampling_is_a_decode_error():
    with pytest.raises(DecodeError, match="frame_step"):
        decode_frames(_cine(3), "cine.dcm", "all", frame_step=0)


# --- one intensity mapping per data set ----------------------------------------

def _one_bright_pixel_pair(a: np.ndarray, bright: int):
    b = a.copy()
    b[0, 0] = bright
    return a, b


@pytest.mark.parametrize("window", [None, (1000, 800)])
def test_dicom_12bit_one_bright_pixel_keeps_the_mapping(window):
    a, b = _one_bright_pixel_pair(np.tile(np.arange(200, 1800, 25, dtype=np.uint16), (64, 1)), 4095)
    outs = []
    for px in (a, b):
        ds = ultrasound(px, bits=12)
        if window:
            ds.WindowCenter, ds.WindowWidth = window
        outs.append(decode(to_bytes(ds), "m.dcm"))
    mask = np.ones(a.shape, bool)
    mask[0, 0] = False
    assert np.array_equal(outs[0][mask], outs[1][mask])


def test_png_16bit_one_bright_pixel_keeps_the_mapping():
    from PIL import Image

    a, b = _one_bright_pixel_pair(np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (64, 1)), 65535)
    outs = []
    for px in (a, b):
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, "PNG")
        outs.append(decode(buf.getvalue(), "x.png"))
    assert np.array_equal(outs[0][1:], outs[1][1:]) and np.array_equal(outs[0][0, 1:], outs[1][0, 1:])


def test_window_matches_pydicom_voi_lut():
    from pydicom.pixels import apply_voi_lut

    px = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (64, 1))
    ds = ultrasound(px, bits=12)
    ds.WindowCenter, ds.WindowWidth = 1500, 1000
    out = decode(to_bytes(ds), "w.dcm")[..., 0].astype(int)
    ref = apply_voi_lut(px, ds)  # LINEAR window onto 0..4095 for unsigned 12-bit
    assert np.abs(out - np.round(ref * 255 / 4095)).max() <= 1


def test_signed_data_offset_by_half_range():
    px = np.array([[-2048, 0, 2047] * 6] * 16, np.int16)
    out = decode(to_bytes(ultrasound(px, bits=12, signed=True)), "s.dcm")[0, :3, 0]
    assert list(out) == [0, round(2048 * 255 / 4095), 255]


# --- archive realities ------------------------------------------------------------

def _sr() -> Dataset:
    ds = header(BasicTextSRStorage)
    ds.Modality, ds.ValueType = "SR", "CONTAINER"
    return ds


def _dicomdir(tmp_path) -> bytes:
    from pydicom.fileset import FileSet

    ds = ultrasound(np.zeros((32, 32), np.uint8))
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = (
        "20240101", "120000", "1", "US", 1, 1)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    fs = FileSet()
    fs.add(ds)
    fs.write(tmp_path / "fileset")
    return (tmp_path / "fileset" / "DICOMDIR").read_bytes()


def test_archive_folder_mixing_index_bare_and_non_images(tmp_path):
    image = ultrasound(np.full((32, 32), 77, np.uint8))
    bare = ultrasound(np.full((32, 32), 99, np.uint8), syntax=ImplicitVRLittleEndian)
    del bare.file_meta  # no preamble, no meta: how some old archives store files
    files = {
        "DICOMDIR": _dicomdir(tmp_path / "src"),
        "bare.dcm": to_bytes(bare, part10=False),
        "image.dcm": to_bytes(image),
        "plan.dcm": to_bytes(header(RTPlanStorage)),
        "pstate.dcm": to_bytes(header(GrayscaleSoftcopyPresentationStateStorage)),
        "report.dcm": to_bytes(_sr()),
    }
    assert files["bare.dcm"][128:132] != b"DICM" and is_dicom(files["bare.dcm"])
    (tmp_path / "archive").mkdir()
    for name, data in files.items():
        (tmp_path / "archive" / name).write_bytes(data)
    outcome = {}
    for item in discover(str(tmp_path / "archive")):
        name = item.input_uri.rsplit("/", 1)[1]
        try:
            outcome[name] = int(decode(read_item(item), name)[0, 0, 0])
        except NotAnImageError as e:
            assert not any(phi in str(e) for phi in PHI_FRAGMENTS)
            outcome[name] = e.kind
    assert outcome == {"DICOMDIR": "DICOMDIR", "bare.dcm": 99, "image.dcm": 77, "plan.dcm": "RT Plan Storage",
                       "pstate.dcm": "Grayscale Softcopy Presentation State Storage",
                       "report.dcm": "Basic Text SR Storage"}


def test_undecodable_syntax_is_named_by_name_and_uid():
    from pydicom.encaps import encapsulate

    ds = ultrasound(np.zeros((32, 32), np.uint8), syntax=MPEG2MPML)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    with pytest.raises(DecodeError) as e:
        decode(to_bytes(ds), "clip.dcm")
    msg = str(e.value)
    assert "clip.dcm" in msg and "MPEG2 Main Profile / Main Level" in msg and str(MPEG2MPML) in msg
    assert not isinstance(e.value, NotAnImageError)
