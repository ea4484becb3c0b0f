"""The deterministic part of every preset: from a decoded screen to the crop the model sees.

    canonical image (H, W, 3) uint8
      -> scan field(s): the DICOM's own ultrasound regions where given, else found in the
         image (`thyro.image.field`), or the whole image
      -> the pane(s) the preset asks for, cropped, black outside the field
      -> annotation marks inpainted (optional, `thyro.image.marks`)
      -> `Cropped`: the crop, its field mask, and the box it came from

Training caches `Cropped` per image (field detection runs once, not once per
epoch); evaluation, Grad-CAM and scoring call the same `crop_field`, so the
pixels cannot drift between them. `geometry` gives the mapping back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from thyro.image.geometry import Box, Geometry, fit
from thyro.image.preset import Preset


@dataclass
class Cropped:
    image: np.ndarray        # (h, w, 3) uint8: the crop, black outside the field
    field_mask: np.ndarray   # (h, w) bool: the field inside the crop
    box: Box                 # the crop in the original image
    shape: tuple[int, int]   # the original image (H, W)
    field_source: str        # "none", "image", "dicom", "fallback"
    pane: int = 0            # which pane (panes: each)
    marks_px: int = 0        # pixels inpainted as annotation marks

    def geometry(self, p: Preset) -> Geometry:
        h, w = self.field_mask.shape
        return Geometry(shape=self.shape, box=self.box, size=p.image_size, inner=fit(h, w, p.image_size, p.resize),
                        field_source=self.field_source)


def find_fields(img: np.ndarray, regions=None) -> list:
    """Scan fields of a screen: DICOM tissue regions when the file carries them, else the image's own."""
    from thyro.image import field

    if regions:
        tissue = [r for r in regions if getattr(r, "data_type", "") == "tissue"] or list(regions)
        return [field.field_from_box(r.box, img.shape[:2], source="dicom") for r in tissue]
    return field.detect_fields(img)


def _bbox(boxes: list[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


# The preset settings a crop depends on (`read_crop` reads no others; a test holds it to
# that). The crop cache is keyed by them alone, so models trained at different input
# sizes, or tune trials that vary augmentation, share one set of crops.
CROP_SETTINGS = ("field", "panes", "suppress_marks", "frame")


def crop_field(img: np.ndarray, p: Preset, regions=None) -> list[Cropped]:
    """The crop(s) a preset makes of one canonical image: one, or one per pane with panes=each."""
    H, W = img.shape[:2]
    if p.field == "none":
        return [Cropped(img, np.ones((H, W), bool), (0, 0, H, W), (H, W), "none")]
    fields = find_fields(img, regions)
    if p.panes == "largest":
        groups = [[max(fields, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))]]
    elif p.panes == "all":
        groups = [fields]
    else:
        groups = [[f] for f in fields]
    out = []
    for k, group in enumerate(groups):
        masks = [f.mask((H, W)) for f in group]
        if p.field == "inscribed":  # each pane's largest inner rectangle: no field outline left
            from thyro.image.field import inscribed_box

            boxes = [inscribed_box(m) for m in masks]
            masks = [np.zeros((H, W), bool) for _ in boxes]
            for m, (a, b, c, d) in zip(masks, boxes):
                m[a:c, b:d] = True
        else:
            boxes = [f.box for f in group]
        y0, x0, y1, x1 = box = _bbox(boxes)
        mask = np.logical_or.reduce(masks)[y0:y1, x0:x1]
        crop = img[y0:y1, x0:x1].copy()
        crop[~mask] = 0  # text, scales and markers inside the box but outside the field: gone
        marks = 0
        if p.suppress_marks:
            from thyro.image.marks import suppress_marks

            crop, found = suppress_marks(crop, mask)
            marks = int(found.sum())
        out.append(Cropped(crop, mask, box, (H, W), group[0].source, pane=k, marks_px=marks))
    return out


def crop_one(img: np.ndarray, p: Preset, regions=None) -> Cropped:
    """The crop training and evaluation use (panes=each: the largest pane)."""
    crops = crop_field(img, p, regions)
    if len(crops) == 1:
        return crops[0]
    return max(crops, key=lambda c: c.field_mask.sum())


def read_crop(path: str, p: Preset) -> Cropped:
    """Read a local path or URI, decode the preset's frame, crop as the preset says."""
    from thyro.data.decode import read_source

    return crop_bytes(read_source(path), path, p)[0]


def crop_bytes(data: bytes, name: str, p: Preset):
    """`read_crop` of a file's bytes -> (Cropped, the DecodedImage it came from)."""
    from thyro.data.decode import decode_image

    d = decode_image(data, name, p.frame)
    return crop_one(d.frames[0][1], p, d.regions), d
