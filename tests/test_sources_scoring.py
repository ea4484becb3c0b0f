"""Discovery and per-input scoring rows, without Ray."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from thyro.data.sources import Item, discover, read_item, zip_bytes
from thyro.image.transforms import resolve_preset
from thyro.model.scoring import prepare, row_id


def _png(v=120, size=40):
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), v, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_folder_discovery_is_recursive_and_ordered(tmp_path):
    (tmp_path / "b" / "c").mkdir(parents=True)
    for p in ("a.png", "b/x.png", "b/c/y.dcm", ".hidden"):
        (tmp_path / p).write_bytes(b"x")
    found = [i.input_uri for i in discover(str(tmp_path))]
    assert found == [str(tmp_path / "a.png"), str(tmp_path / "b/x.png"), str(tmp_path / "b/c/y.dcm")]


def test_zip_members_read_in_place_and_unsafe_names_rejected(tmp_path):
    (tmp_path / "a.zip").write_bytes(zip_bytes({"ok/1.png": _png(), "../evil.png": _png(), "/abs.png": _png()}))
    items = list(discover(str(tmp_path / "a.zip")))
    by_name = {i.input_uri.split("!")[1]: i for i in items}
    assert by_name["ok/1.png"].error is None and read_item(by_name["ok/1.png"]) == _png()
    assert "unsafe" in by_name["../evil.png"].error and "unsafe" in by_name["/abs.png"].error
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz")])
def test_tar_streamed_with_inline_bytes(tmp_path, mode, suffix):
    path = tmp_path / f"a{suffix}"
    with tarfile.open(path, mode) as t:
        for name in ("s/1.png", "../up.png"):
            info = tarfile.TarInfo(name)
            data = _png()
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    items = list(discover(str(path)))
    assert [i.input_uri.split("!")[1] for i in items] == ["s/1.png", "../up.png"]
    assert items[0].data == _png() and items[1].error and items[1].data is None


def test_prepare_turns_every_failure_into_a_row():
    preset = resolve_preset("study", image_size=32)
    cases = {"ok.png": _png(), "empty.png": b"", "junk.png": b"hello" * 50, "tiny.png": _png(size=1)}
    rows = {k: prepare(Item(k, data=v), preset)[0] for k, v in cases.items()}
    assert rows["ok.png"]["status"] == "ok" and rows["ok.png"]["pixels"].shape == (3, 32, 32)
    for k in ("empty.png", "junk.png", "tiny.png"):
        assert rows[k]["status"] == "error" and rows[k]["error"] and rows[k]["pixels"] is None
    assert prepare(Item("gone.png"), preset)[0]["status"] == "error"  # missing file
    assert prepare(Item("x!../e.png", error="unsafe"), preset)[0]["error"] == "unsafe"


def test_row_ids_hide_the_path():
    rid = row_id("/archive/DOE_JANE/scan.png", 0)
    assert "DOE" not in rid and len(rid) == 24 and rid != row_id("/archive/DOE_JANE/scan.png", 1)
    assert rid != row_id("/archive/DOE_JANE/scan.png", 0, salt="s3cret")


def test_overlay_uses_matplotlibs_jet_and_keeps_the_image_size():
    from matplotlib import colormaps

    from thyro.model.scoring import JET, overlay_png

    assert np.abs(JET.astype(int) - np.round(colormaps["jet"](np.arange(256))[:, :3] * 255)).max() <= 1
    preset = resolve_preset("study", 64)
    cam = np.zeros((16, 16), np.float16)
    cam[4:8, 4:8] = 1
    png = Image.open(io.BytesIO(overlay_png(np.zeros((3, 64, 64), np.float32), cam, preset)))
    rgb = np.asarray(png)
    assert png.size == (64, 64) and rgb.shape == (64, 64, 3)
    # hot where the map is 1 (jet's dark red), cold (jet's dark blue) elsewhere
    assert rgb[24, 24, 0] > rgb[24, 24, 2] and rgb[60, 60, 2] > rgb[60, 60, 0]
