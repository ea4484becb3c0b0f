"""The model card (`metadata.json`) that travels with every saved run.

After MONAI bundles' metadata.json: what goes in, how it is preprocessed,
what comes out, how it was trained and evaluated, with what software, and
what it is (and is not) for.
"""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from importlib import metadata as _md
from pathlib import Path

INTENDED_USE = ("Research use only. Not a medical device; not for diagnosis, triage or any "
                "clinical decision. Trained and evaluated as described below; performance on "
                "other scanners, populations or synthetic-vs-real data is unknown.")
CLASSES = ["benign", "malignant"]


def package_versions(names=("thyro", "torch", "torchvision", "numpy", "scikit-learn", "scikit-image",
                            "pydicom", "pillow", "ray")) -> dict:
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = _md.version(n)
        except _md.PackageNotFoundError:
            pass
    return out


def git_sha() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def build_card(*, model_name: str, preset: dict, threshold: float, split: dict, metrics: dict,
               data: dict, training: dict, cam_layer: str, name: str = "thyro",
               calibration: dict | None = None, transform_input: bool | None = None) -> dict:
    """`threshold` labels the calibrated probability (softmax of log-odds / temperature)."""
    calibration = calibration or {"temperature": 1.0, "threshold": threshold, "chosen_on": "fixed"}
    return {
        "schema": "thyro.model.modelcard/1",
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "intended_use": INTENDED_USE,
        "model": {"architecture": model_name, "weights_file": "model.pt", "num_classes": 2,
                  "cam_layer": cam_layer, "transform_input": transform_input},
        "inputs": {"type": "ultrasound image (B-mode), decoded to 8-bit RGB",
                   "tensor": f"float32 (N, 3, {preset['image_size']}, {preset['image_size']})",
                   "preprocessing": preset},
        "outputs": {"classes": CLASSES, "positive_class": "malignant",
                    "score": "probability of malignancy: sigmoid((z1 - z0) / temperature)",
                    "temperature": calibration["temperature"], "threshold": threshold,
                    "operating_point": calibration},
        "data": data,
        "split": split,
        "training": training,
        "metrics": metrics,
        "versions": package_versions(),
        "git_sha": git_sha(),
    }
