"""Saved runs: a folder (local or fsspec URI) holding a trained model and its story.

    model.pt          state_dict (load with weights_only=True)
    metadata.json     model card (thyro.model.modelcard), incl. the preprocessing preset
    config.yaml       the resolved config the run was made with
    metrics.json      test metrics at the card's threshold
    predictions.csv   test-set image_id, label, prob_malignant
    history.json      per-epoch training log
"""

from __future__ import annotations

import io
import json

from typing import TYPE_CHECKING

from thyro.data.storage import exists, join, read_bytes, write_bytes

if TYPE_CHECKING:  # torch and pandas load on use: the score job's driver reads cards, not weights
    import pandas as pd
    import torch.nn as nn


class RunError(ValueError):
    """A saved run is missing or incomplete."""


def _read(uri: str) -> bytes:
    try:
        return read_bytes(uri)
    except FileNotFoundError:
        raise RunError(f"saved run incomplete: {uri} not found") from None


def is_complete(run: str) -> bool:
    """The card is written last, so its presence means the run finished."""
    return exists(join(run, "metadata.json"))


def save_run(out: str, model: nn.Module, card: dict, config_yaml: str, metrics: dict,
             predictions: pd.DataFrame | None = None, history: list | None = None) -> None:
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    write_bytes(join(out, "model.pt"), buf.getvalue())
    write_bytes(join(out, "config.yaml"), config_yaml.encode())
    write_bytes(join(out, "metrics.json"), json.dumps(metrics, indent=2).encode())
    if predictions is not None:
        write_bytes(join(out, "predictions.csv"), predictions.to_csv(index=False).encode())
    if history is not None:
        write_bytes(join(out, "history.json"), json.dumps(history, indent=2).encode())
    # The card last: its presence marks a complete run.
    write_bytes(join(out, "metadata.json"), json.dumps(card, indent=2).encode())


def load_card(run: str) -> dict:
    return json.loads(_read(join(run, "metadata.json")))


def load_run(run: str, map_location="cpu") -> tuple[nn.Module, dict]:
    """-> (model in eval mode with its weights, model card)."""
    import torch

    from thyro.model.models import build_model

    card = load_card(run)
    model = build_model(card["model"]["architecture"], weights=None, num_classes=card["model"]["num_classes"],
                        transform_input=card["model"].get("transform_input"))
    sd = torch.load(io.BytesIO(_read(join(run, card["model"]["weights_file"]))),
                    map_location=map_location, weights_only=True)
    model.load_state_dict(sd)
    return model.eval(), card


def load_predictions(run: str) -> pd.DataFrame:
    import pandas as pd

    return pd.read_csv(io.BytesIO(_read(join(run, "predictions.csv"))))
