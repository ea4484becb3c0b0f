import numpy as np
import pytest
from PIL import Image

from thyro.data.manifest import ManifestError, load_manifest


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32), 100, np.uint8)).save(path)


def test_folder_layout_any_case(tmp_path):
    _img(tmp_path / "Benign" / "a.png")
    _img(tmp_path / "MALIGNANT" / "sub" / "b.png")
    df = load_manifest(str(tmp_path))
    assert sorted(zip(df.image_id, df.label)) == [("Benign/a.png", 0), ("MALIGNANT/sub/b.png", 1)]


def test_csv_paths_relative_to_csv(tmp_path):
    _img(tmp_path / "imgs" / "a.png")
    _img(tmp_path / "imgs" / "b.png")
    (tmp_path / "m.csv").write_text("path,label,patient_id\nimgs/a.png,benign,p1\nimgs/b.png,1,p2\n")
    df = load_manifest(str(tmp_path / "m.csv"))
    assert df.path.tolist() == [str(tmp_path / "imgs/a.png"), str(tmp_path / "imgs/b.png")]
    assert df.label.tolist() == [0, 1] and df.patient_id.tolist() == ["p1", "p2"]


def test_unknown_label_names_file_and_line(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,benign\na2.png,suspicious\n")
    with pytest.raises(ManifestError, match=r"m.csv line 3 \(a2.png\): unknown label 'suspicious'"):
        load_manifest(str(tmp_path / "m.csv"))


def test_unknown_class_folder_is_named(tmp_path):
    _img(tmp_path / "benign" / "a.png")
    _img(tmp_path / "indeterminate" / "b.png")
    with pytest.raises(ManifestError, match="indeterminate"):
        load_manifest(str(tmp_path))


def test_missing_file_is_named(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,benign\ngone.png,malignant\n")
    with pytest.raises(ManifestError, match="gone.png"):
        load_manifest(str(tmp_path / "m.csv"))


def test_a_folder_holding_manifest_csv_is_a_data_set(tiny_phantom):
    # `thyro phantom --out DIR` then `thyro train --data DIR` failed with "unknown label 'images'".
    from thyro.data.manifest import load_manifest

    by_folder = load_manifest(str(tiny_phantom.parent))
    by_csv = load_manifest(str(tiny_phantom))
    assert by_folder.equals(by_csv) and len(by_folder) == 36
