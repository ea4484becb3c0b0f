"""Where a model input came from: the crop of the original image and how it was fitted.

Every model input is made from one box of the original image (the scan field,
or the whole image), resized either by squashing it onto the square (the
study's `Resize((S, S))`) or by letterboxing (scaled to fit, padded with
black, aspect kept). `Geometry` records that mapping so that anything the
model produces on its square input (a Grad-CAM map) can be put back over the
original image, where shapes are measured and overlays drawn, and so that a
field mask of the original image can be carried onto the model's square.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), end-exclusive


@dataclass(frozen=True)
class Geometry:
    shape: tuple[int, int]  # original image (H, W)
    box: Box                # the crop, in original pixels
    size: int               # model input side S
    inner: Box              # where the crop lies on the S x S input
    field_source: str = "none"  # "none" (whole image), "image", "dicom", "fallback"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(shape=tuple(d["shape"]), box=tuple(d["box"]), size=int(d["size"]), inner=tuple(d["inner"]),
                   field_source=d.get("field_source", "none"))

    def at_shape(self, shape: tuple[int, int]) -> "Geometry":
        """The same crop on the image decoded at another size (`shape`, e.g. the file's full size
        when a JPEG was decoded reduced): the box scaled and rounded; the model input unchanged."""
        h, w = self.shape
        H, W = int(shape[0]), int(shape[1])
        if (h, w) == (H, W):
            return self
        y0, x0, y1, x1 = self.box
        sy, sx = H / h, W / w
        box = (min(H - 1, round(y0 * sy)), min(W - 1, round(x0 * sx)), min(H, round(y1 * sy)), min(W, round(x1 * sx)))
        box = (box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1))
        return Geometry(shape=(H, W), box=box, size=self.size, inner=self.inner, field_source=self.field_source)

    @property
    def crop_shape(self) -> tuple[int, int]:
        y0, x0, y1, x1 = self.box
        return y1 - y0, x1 - x0


def fit(crop_h: int, crop_w: int, size: int, mode: str) -> Box:
    """Where a crop_h x crop_w crop lands on the size x size input."""
    if mode == "squash":
        return (0, 0, size, size)
    if mode != "letterbox":
        raise ValueError(f"unknown resize mode {mode!r} (squash or letterbox)")
    s = size / max(crop_h, crop_w)
    h, w = max(1, round(crop_h * s)), max(1, round(crop_w * s))
    y0, x0 = (size - h) // 2, (size - w) // 2
    return (y0, x0, y0 + h, x0 + w)


def place(crop: np.ndarray, size: int, inner: Box) -> np.ndarray:
    """Resize an (h, w[, 3]) uint8 crop into `inner` of a black size x size canvas."""
    y0, x0, y1, x1 = inner
    out = np.zeros((size, size) + crop.shape[2:], np.uint8)
    im = Image.fromarray(crop)
    if im.size != (x1 - x0, y1 - y0):
        # Antialiased downscaling, as torchvision's Resize(antialias=True) does.
        im = im.resize((x1 - x0, y1 - y0), Image.BILINEAR, reducing_gap=None)
    out[y0:y1, x0:x1] = np.asarray(im)
    return out


def _resize_map(m: np.ndarray, h: int, w: int) -> np.ndarray:
    if m.shape == (h, w):
        return m.astype(np.float32, copy=False)
    return np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))


def model_map_to_crop(cam: np.ndarray, g: Geometry, max_side: int | None = None) -> np.ndarray:
    """A map over the model's square input (any resolution) -> the same map over the crop, in the
    crop's true aspect ratio, at most `max_side` pixels on its long side (None: the crop's own size)."""
    k = cam.shape[0] / g.size
    y0, x0, y1, x1 = (int(round(v * k)) for v in g.inner)
    part = cam[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
    ch, cw = g.crop_shape
    if max_side is not None and max(ch, cw) > max_side:
        s = max_side / max(ch, cw)
        ch, cw = max(1, round(ch * s)), max(1, round(cw * s))
    return _resize_map(part, ch, cw)


def crop_map_to_original(m: np.ndarray, g: Geometry) -> np.ndarray:
    """A map over the crop -> a map over the whole original image (zero outside the crop)."""
    out = np.zeros(g.shape, np.float32)
    y0, x0, y1, x1 = g.box
    out[y0:y1, x0:x1] = _resize_map(m, y1 - y0, x1 - x0)
    return out


def original_mask_to_model(mask: np.ndarray, g: Geometry, size: int | None = None) -> np.ndarray:
    """A boolean mask of the original image (e.g. the scan field) -> the model's square input,
    at `size` (default the model's own), False on the letterbox padding."""
    y0, x0, y1, x1 = g.box
    sub = (np.asarray(mask, bool)[y0:y1, x0:x1] * 255).astype(np.uint8)
    full = place(sub, g.size, g.inner) > 127
    if size is not None and size != g.size:
        full = np.asarray(Image.fromarray(full).resize((size, size), Image.NEAREST))
    return full
