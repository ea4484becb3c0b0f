"""A torch Dataset over a manifest: decode, crop to the scan field, preprocess, label."""

from __future__ import annotations

import pandas as pd
import torch
from torch.utils.data import Dataset

from thyro.image.preprocess import Cropped, read_crop
from thyro.image.transforms import Preset, TrainTransform, eval_tensor


class UltrasoundDataset(Dataset):
    """Rows of a manifest -> (image tensor, label).

    `cache=True` keeps each image's field crop in memory: small study-sized data
    sets (hundreds of images) then decode and find their scan field once, not
    once per epoch. `crops` (path -> Cropped, `thyro.data.crop_cache`) starts that
    cache with crops made once for every training of the same preset.
    """

    def __init__(self, manifest: pd.DataFrame, preset: Preset, train: bool, cache: bool = True,
                 crops: dict[str, Cropped] | None = None):
        self.paths = manifest["path"].tolist()
        self.labels = manifest["label"].astype(int).tolist()
        self.preset = preset
        self.train_transform = TrainTransform(preset) if train else None
        self._cache: dict[int, Cropped] | None = {} if cache else None
        if self._cache is not None and crops:
            self._cache.update((i, crops[p]) for i, p in enumerate(self.paths) if p in crops)

    def __len__(self) -> int:
        return len(self.paths)

    def crop(self, i: int) -> Cropped:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        c = read_crop(self.paths[i], self.preset)
        if self._cache is not None:
            self._cache[i] = c
        return c

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        c = self.crop(i)
        if self.train_transform is not None:
            return self.train_transform(c.image, c.field_mask), self.labels[i]
        return eval_tensor(c.image, self.preset), self.labels[i]
