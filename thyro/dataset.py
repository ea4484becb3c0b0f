"""A torch Dataset over a manifest: decode, preprocess, label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from thyro.decode import read_image
from thyro.transforms import Preset, eval_transform, train_transform


class UltrasoundDataset(Dataset):
    """Rows of a manifest -> (image tensor, label).

    `cache=True` keeps decoded images in memory: small study-sized data sets
    (hundreds of images) then decode once instead of once per epoch.
    """

    def __init__(self, manifest: pd.DataFrame, preset: Preset, train: bool,
                 frame: str = "middle", cache: bool = True):
        self.paths = manifest["path"].tolist()
        self.labels = manifest["label"].astype(int).tolist()
        self.transform = train_transform(preset) if train else eval_transform(preset)
        self.frame = frame
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> np.ndarray:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        img = read_image(self.paths[i], frame=self.frame)
        if self._cache is not None:
            self._cache[i] = img
        return img

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.image(i)), self.labels[i]
