"""Annotation-mark detection on real breast ultrasound against a hand-made reference.

    python benchmarks/marks_busi.py [--data ../shared/data/busi] [--all]

`benchmarks/marks_busi_reference.csv` lists, for 35 BUSI images (mixed classes, with
and without calipers), the centre of every caliper "+" (`plus`), points on the dotted
measuring lines (`dot`), the calipers' number labels (`digit`), text boxes (`text`, x0 y0
x1 y1), a colour Doppler box and flow (`box`, `colour`) and bright punctate tissue spots
that are NOT marks (`bright`, microcalcification-like); `none`: nothing seen. Made by eye
on 3-8x zooms; positions are good to about 1 px. No image data is stored.

Settings (rows): `stored`, the whole 256 px image as BUSI stores it; `pipeline`, the
field-marks preset's path (`crop_field`: the inscribed field crop, marks found at the
crop's own resolution, which for BUSI is the stored one: the pipeline resamples to the
preset's image_size only after suppression); `x0.5` and `x2`, the whole image resampled
(area / cubic) to 128 and 512 px, as other scanners' resolutions, to check the detector
is scale-aware (the originals were about 500x600 before BUSI's copy shrank them).

Columns: recall of caliper centres, arms (mask within 1 px of the points 3 px from the
centre, in stored pixels), dotted-line points, digits (a mask pixel within 3 stored px);
text: share of text boxes with >= half of their bright stroke pixels masked; bright:
share of tissue spots touched (lower is better); fp: masked share of field pixels on the
images with no annotation (BUSI's top-left probe icon excluded), mean / max; stray:
masked share of field pixels farther than 6 px from every reference annotation, all 35.
`--all`: also the share of all 647 images with anything masked, and the mean masked area.
`--phantom N`: also N of thyro's scanner-layout phantom screens (shortcuts 1, 256 px), each
rendered twice from one random state, with and without its overlays: the pixels that
differ are the drawn marks inside the field (the oracle). Printed: share of them masked,
and the masked share of field pixels more than 2 px from any of them (tissue), mean / max.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from unittest import mock

import cv2
import numpy as np

from thyro.image.marks import suppress_marks
from thyro.image.preprocess import crop_field
from thyro.image.transforms import PRESETS

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "marks_busi_reference.csv")
ANNOTATION = {"plus", "dot", "digit", "text", "box", "colour"}
ICON = 12  # BUSI's burned-in probe icon sits in the top-left 12x12 stored pixels
NEAR = 3   # stored px: a reference mark counts as found if the mask comes this close
STRAY = 6  # stored px: masked pixels farther than this from every annotation are false


def read_reference(path: str = REFERENCE) -> dict[str, list[tuple]]:
    ref: dict[str, list[tuple]] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            box = tuple(float(r[k]) for k in ("x0", "y0", "x1", "y1")) if r["x0"] else None
            ref.setdefault(r["file"], []).append((r["kind"], box))
    return ref


def load(data: str, name: str) -> np.ndarray:
    img = cv2.imread(os.path.join(data, name), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"{os.path.join(data, name)}: missing or not an image")
    return np.ascontiguousarray(img[..., ::-1])


def detect(img: np.ndarray, setting: str):
    """(image the detector saw, its mask, field mask, map stored (x, y) -> this frame, scale)."""
    if setting == "pipeline":
        p = PRESETS["field-marks"]
        plain = type(p)(**{**p.to_dict(), "suppress_marks": False})
        c = crop_field(img, plain)[0]
        _, mask = suppress_marks(c.image, c.field_mask)
        y0, x0 = c.box[0], c.box[1]
        return c.image, mask, c.field_mask, (lambda x, y: (x - x0, y - y0)), 1.0
    f = {"stored": 1.0, "x0.5": 0.5, "x2": 2.0}[setting]
    if f != 1.0:
        n = round(img.shape[0] * f)
        img = cv2.resize(img, (n, n), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
    _, mask = suppress_marks(img)
    return img, mask, np.ones(mask.shape, bool), (lambda x, y: ((x + 0.5) * f - 0.5, (y + 0.5) * f - 0.5)), f


def near(mask: np.ndarray, x: float, y: float, r: float) -> bool | None:
    """Any mask pixel within r of (x, y); None where (x, y) is outside the frame."""
    h, w = mask.shape
    if not (0 <= x < w and 0 <= y < h):
        return None
    xi, yi, ri = int(round(x)), int(round(y)), int(np.ceil(r))
    win = mask[max(0, yi - ri):yi + ri + 1, max(0, xi - ri):xi + ri + 1]
    yy, xx = np.nonzero(win)
    return bool(len(yy)) and bool((np.hypot(yy + max(0, yi - ri) - y, xx + max(0, xi - ri) - x) <= r).any())


def evaluate(data: str, ref: dict, setting: str) -> dict:
    hits: dict[str, list[bool]] = {k: [] for k in ("plus", "arm", "dot", "digit", "text", "bright")}
    fp, stray_px, field_px = [], 0, 0
    t = 0.0
    for name, rows in ref.items():
        img = load(data, name)
        t0 = time.perf_counter()
        seen, mask, field, to_frame, f = detect(img, setting)
        t += time.perf_counter() - t0
        grey = cv2.cvtColor(seen, cv2.COLOR_RGB2GRAY)
        h, w = mask.shape
        annotated = np.zeros((h, w), np.uint8)
        for kind, box in rows:
            if box is None:
                continue
            (ax, ay), (bx, by) = to_frame(box[0], box[1]), to_frame(box[2], box[3])
            if kind in ANNOTATION:
                pad = STRAY * f
                cv2.rectangle(annotated, (int(ax - pad), int(ay - pad)),
                              (int(np.ceil(bx + pad)), int(np.ceil(by + pad))), 1, -1)
            if kind == "text":
                x0, y0, x1, y1 = (int(round(v)) for v in (max(ax, 0), max(ay, 0), min(bx, w - 1), min(by, h - 1)))
                if x1 <= x0 or y1 <= y0:
                    continue
                g, m = grey[y0:y1 + 1, x0:x1 + 1], mask[y0:y1 + 1, x0:x1 + 1]
                stroke = g >= max(150, np.percentile(g, 85))
                hits["text"].append(bool(stroke.any()) and m[stroke].mean() >= 0.5)
            elif kind in hits:
                found = near(mask, ax, ay, NEAR * f)
                if found is None:
                    continue
                hits[kind].append(found)
                if kind == "plus":
                    for dx, dy in ((-3, 0), (3, 0), (0, -3), (0, 3)):
                        arm = near(mask, *to_frame(box[0] + dx, box[1] + dy), max(1.0, f))
                        if arm is not None:
                            hits["arm"].append(arm)
        icon = np.zeros((h, w), bool)
        ix, iy = to_frame(ICON, ICON)
        icon[:max(0, int(iy)), :max(0, int(ix))] = True
        judged = field & ~icon
        if not any(k in ANNOTATION for k, _ in rows):
            fp.append(mask[judged].mean())
        stray_px += int((mask & judged & (annotated == 0)).sum())
        field_px += int(judged.sum())
    out = {k: (float(np.mean(v)) if v else float("nan"), len(v)) for k, v in hits.items()}
    out["fp"] = (float(np.mean(fp)), float(np.max(fp)), len(fp))
    out["stray"] = stray_px / field_px
    out["ms"] = t / len(ref) * 1000
    return out


def survey(data: str) -> tuple[float, float, int]:
    names = []
    for cls in ("benign", "malignant"):
        names += [os.path.join(cls, n) for n in sorted(os.listdir(os.path.join(data, cls))) if n.endswith(".png")]
    any_mark, area = [], []
    for n in names:
        _, m = suppress_marks(load(data, n))
        any_mark.append(m.any())
        area.append(m.mean())
    return float(np.mean(any_mark)), float(np.mean(area)), len(names)


def phantom_screens(n: int, size: int = 256):
    """(screen, field mask, drawn-overlay mask) for n scanner-layout phantom screens."""
    from thyro.data import phantom, screen

    out = []
    for k in range(n):
        label, preset = k % 2, screen.PRESETS[k % len(screen.PRESETS)]
        rng = np.random.default_rng([0, k])
        nodule = phantom.sample_nodule(rng, label, 0.0)
        state = rng.bit_generator.state
        img, _, field, _ = phantom.render_screen(rng, size, label, nodule, k, preset, 1.0)
        rng.bit_generator.state = state
        with mock.patch.object(screen, "draw", lambda *a, **kw: None):  # the same screen, no overlays
            bare, _, _, _ = phantom.render_screen(rng, size, label, nodule, k, preset, 1.0)
        out.append((img, field, (img != bare).any(axis=2) & field))
    return out


def phantom_figures(n: int) -> tuple[float, float, float]:
    recall, tissue = [], []
    for img, field, drawn in phantom_screens(n):
        _, mask = suppress_marks(img, field)
        if drawn.any():
            recall.append(mask[drawn].mean())
        away = field & (cv2.dilate(drawn.astype(np.uint8), np.ones((5, 5), np.uint8)) == 0)
        tissue.append(mask[away].mean())
    return float(np.mean(recall)), float(np.mean(tissue)), float(np.max(tissue))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data", "busi"))
    ap.add_argument("--all", action="store_true", help="also survey all images (share with any mark, mean area)")
    ap.add_argument("--phantom", type=int, default=0, help="also N phantom screens against their drawn overlays")
    args = ap.parse_args()
    if not os.path.isdir(args.data):
        raise SystemExit(f"{args.data}: BUSI folder not found (see --data)")
    cv2.setNumThreads(1)
    ref = read_reference()
    print(f"{len(ref)} images, {sum(k == 'plus' for rows in ref.values() for k, _ in rows)} calipers")
    print(f"{'setting':>9} {'plus':>11} {'arms':>11} {'dots':>11} {'digits':>11} {'text':>9} {'bright':>9} "
          f"{'fp mean/max':>15} {'stray':>8} {'ms':>6}")
    for s in ("stored", "pipeline", "x0.5", "x2"):
        r = evaluate(args.data, ref, s)

        def c(k, wd=11):
            return f"{r[k][0]:.2f} ({r[k][1]:>2})".rjust(wd)
        fp = f"{r['fp'][0] * 100:.3f}/{r['fp'][1] * 100:.2f}%"
        print(f"{s:>9} {c('plus')} {c('arm')} {c('dot')} {c('digit')} {c('text', 9)} {c('bright', 9)} {fp:>15} "
              f"{r['stray'] * 100:7.3f}% {r['ms']:6.2f}")
    if args.all:
        share, area, n = survey(args.data)
        print(f"all {n} stored images: anything masked on {share:.3f}, mean masked area {area * 100:.3f}%")
    if args.phantom:
        rec, fp, fp_max = phantom_figures(args.phantom)
        print(f"phantom, {args.phantom} scanner screens: drawn marks in the field masked {rec:.3f}; "
              f"tissue masked {fp * 100:.3f}% mean, {fp_max * 100:.2f}% max")


if __name__ == "__main__":
    main()
