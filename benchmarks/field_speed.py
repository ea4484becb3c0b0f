"""ms per image for detect_fields and suppress_marks on drawn screens of three sizes.

    python benchmarks/field_speed.py [--repeat 20]
"""

import argparse
import time

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

from thyro.image.field import detect_fields, union_mask
from thyro.image.marks import suppress_marks


def screen(h, w, seed=0):
    """A linear field (80% of each side) of Rayleigh speckle with a caliper "+" and a text line."""
    rng = np.random.default_rng(seed)
    a, b = (gaussian_filter(rng.normal(size=(h, w)), 1.5) for _ in range(2))
    r = np.hypot(a, b)
    img = np.zeros((h, w, 3), np.uint8)
    y0, x0, y1, x1 = h // 10, w // 10, h - h // 10, w - w // 10
    img[y0:y1, x0:x1] = np.clip(r * (90 / r.mean()), 0, 255).astype(np.uint8)[y0:y1, x0:x1, None]
    cy, cx = h // 2, w // 2
    cv2.line(img, (cx - 8, cy), (cx + 8, cy), (255, 255, 255), 1)
    cv2.line(img, (cx, cy - 8), (cx, cy + 8), (255, 255, 255), 1)
    cv2.putText(img, "THYROID R LONG", (5, max(12, y0 - 5)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255,) * 3, 1)
    return img


def ms(fn, repeat):
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    cv2.setNumThreads(1)  # per-image cost on one core, as a data-loader worker sees it
    print(f"{'size':>10} {'detect_fields ms':>17} {'suppress_marks ms':>18}")
    for h, w in ((256, 256), (600, 800), (1080, 1920)):
        img = screen(h, w)
        field = union_mask(detect_fields(img), img.shape)
        print(f"{h}x{w:<6} {ms(lambda: detect_fields(img), args.repeat):17.2f} "
              f"{ms(lambda: suppress_marks(img, field), args.repeat):18.2f}")


if __name__ == "__main__":
    main()
