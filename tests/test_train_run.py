import json

import numpy as np
import pandas as pd
import pytest

from thyro.cli import main
from thyro.config import load_config
from thyro.data.decode import read_image
from thyro.model.predictor import Predictor


@pytest.fixture(scope="module")
def run_dir(tiny_phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--data", str(tiny_phantom), "--out", str(out), "--epochs", "1",
               "--set", "preprocess.image_size=64", "--set", "eval.bootstrap=20", "--set", "train.batch_size=8",
               # fp32 like the predictor's default, so its outputs must match to 1e-5
               "--set", "train.precision=fp32", "--set", "train.channels_last=false"])
    assert rc == 0
    return out


def test_run_folder_is_complete(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"model.pt", "metadata.json", "config.yaml", "metrics.json", "predictions.csv",
            "history.json", "leakage.json"} <= names
    m = json.loads((run_dir / "metrics.json").read_text())
    assert {"auc", "accuracy", "recall", "precision", "f1", "specificity"} <= set(m)


def test_model_card_carries_what_a_reader_needs(run_dir):
    card = json.loads((run_dir / "metadata.json").read_text())
    assert "not for diagnosis" in card["intended_use"].lower()
    assert card["inputs"]["preprocessing"]["image_size"] == 64
    assert card["inputs"]["preprocessing"]["name"] == "field-marks"  # the CLI read configs/default.yaml
    assert card["outputs"]["classes"] == ["benign", "malignant"]
    op = card["outputs"]["operating_point"]  # fitted on held-back training patients (configs/default.yaml)
    assert op["chosen_on"] == "calibration" and card["outputs"]["threshold"] == op["threshold"]
    assert card["split"]["n_calibration"] > 0 and card["outputs"]["temperature"] > 0
    assert card["split"]["leakage"]["shared_patients"] == 0 and card["split"]["n_test"] > 0
    assert {"torch", "torchvision", "python"} <= set(card["versions"])
    assert set(card["metrics"]) >= {"auc", "f1"}


def test_resolved_config_is_saved_and_reloads(run_dir):
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.preprocess.image_size == 64 and cfg.train.epochs == 1


def test_predictor_reproduces_the_runs_test_predictions(run_dir, tiny_phantom):
    preds = pd.read_csv(run_dir / "predictions.csv")
    p = Predictor(str(run_dir), cam_size=16)
    images = [read_image(str(tiny_phantom.parent / i)) for i in preds.image_id]
    out = p.predict(images)
    assert np.allclose(out["prob_malignant"], preds.prob_calibrated, atol=1e-5)
    # maps over the crop the model saw (the scan field), in its true aspect, 16 px on the long side
    for cam, g in zip(out["cam"], out["geometry"]):
        (h, w), (bh, bw) = cam.shape, g.crop_shape
        assert cam.dtype == np.float16 and max(h, w) == 16 and abs(h / w - bh / bw) < 0.15


def test_bad_config_exits_2_naming_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  nme: resnet18\n")
    assert main(["train", "--out", str(tmp_path / "r"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model.nme" in err and str(bad) in err
    assert not (tmp_path / "r").exists()


def test_corrupt_image_in_dataset_is_named(tmp_path, tiny_phantom):
    df = pd.read_csv(tiny_phantom)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    for _, r in df.iterrows():
        (tmp_path / r.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / r.path).write_bytes((tiny_phantom.parent / r.path).read_bytes())
    df = pd.concat([df, pd.DataFrame([{"path": "broken.png", "label": "benign", "patient_id": "Z"}])])
    df.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match="broken.png"):
        from thyro.model.training import train_run
        train_run(load_config(None, [{"data": {"source": str(tmp_path / "m.csv")}, "train": {"epochs": 1},
                                      "preprocess": {"image_size": 64}}]), str(tmp_path / "r"))


def test_inception_run_reloads_with_its_transform_input(tmp_path):
    """torchvision's ImageNet Inception expects transform_input=True; a reloaded run lost it."""
    import torch

    from thyro.model import checkpoint
    from thyro.model.models import build_model

    model = build_model("inception_v3", transform_input=True).eval()
    card = {"model": {"architecture": "inception_v3", "weights_file": "model.pt", "num_classes": 2,
                      "transform_input": True}}
    checkpoint.save_run(str(tmp_path), model, card, "", {})
    again, _ = checkpoint.load_run(str(tmp_path))
    x = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        assert again.transform_input and torch.equal(model(x), again(x))


def test_threshold_is_chosen_without_the_test_labels(tiny_phantom, tmp_path):
    """Shuffling the test set's labels must not move the operating point (chosen on held-back
    training patients) nor the temperature."""
    from thyro.data.manifest import load_manifest
    from thyro.data.splits import make_splits
    from thyro.model.training import train_run

    manifest = load_manifest(str(tiny_phantom))
    splits = make_splits(manifest, 2, 0.3, 0)
    cfg = load_config(None, [{"preprocess": {"image_size": 32}, "train": {"epochs": 1, "batch_size": 8},
                              "eval": {"bootstrap": 0, "calibration_fraction": 0.3}}])
    a = train_run(cfg, str(tmp_path / "a"), manifest=manifest, splits=splits, log=lambda s: None)
    test_ids = set(splits[(splits.repeat == 0) & (splits.subset == "test")].image_id)
    shuffled = manifest.copy()
    te = shuffled.image_id.isin(test_ids)
    shuffled.loc[te, "label"] = np.random.default_rng(0).permutation(shuffled.loc[te, "label"].to_numpy())
    b = train_run(cfg, str(tmp_path / "b"), manifest=shuffled, splits=splits, log=lambda s: None)
    op_a, op_b = a.card["outputs"]["operating_point"], b.card["outputs"]["operating_point"]
    assert op_a["chosen_on"] == "calibration" and op_a["n_calibration"] > 0
    assert op_a["threshold"] == op_b["threshold"] and op_a["temperature"] == op_b["temperature"]
