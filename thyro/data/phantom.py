"""Synthetic thyroid ultrasound phantom: thyro's built-in default data set.

Each image imitates a transverse B-mode scan from a linear probe: a scan field
(black outside) with skin, subcutaneous fat, strap muscles, the thyroid lobe,
the carotid artery and sometimes the tracheal ring's shadow; multiplicative
speckle and log compression; burned-in scanner text, a depth scale and a focus
marker. Inside the lobe sits one nodule whose appearance is drawn from
TI-RADS-like feature distributions that depend on the class:

- malignant: more often solid, hypo/very hypoechoic, taller-than-wide,
  lobulated or irregular margins, punctate echogenic foci;
- benign: more often cystic or spongiform, iso/hyperechoic, wider-than-tall,
  smooth, a hypoechoic halo, comet-tail artefacts.

The tables overlap (benign nodules can be solid and hypoechoic, malignant ones
smooth or wider-than-tall), so no single cue decides the class and a model
must combine several; `overlap` mixes each class's tables further towards the
pooled ones (1: indistinguishable). Everything is deterministic by seed; the nodule's true mask is written too, so that
Grad-CAM localisation can be measured.

`layout="scanner"` wraps the scans in whole scanner screens (thyro.data.screen),
whose overlays follow the class as much as `shortcuts` says; the masks and the
field masks are then in screen geometry.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, asdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from thyro.data import screen

# Bump when the rendering changes, so cached phantoms are regenerated.
VERSION = 6

# Feature tables: (benign, malignant) probabilities over each feature's values.
FEATURES: dict[str, tuple[list[str], list[float], list[float]]] = {
    "composition": (["cystic", "spongiform", "mixed", "solid"],
                    [0.25, 0.25, 0.32, 0.18], [0.00, 0.00, 0.10, 0.90]),
    "echogenicity": (["hyper", "iso", "hypo", "very_hypo"],
                     [0.28, 0.52, 0.15, 0.05], [0.02, 0.13, 0.50, 0.35]),
    "shape": (["wider", "taller"], [0.92, 0.08], [0.50, 0.50]),
    "margin": (["smooth", "ill_defined", "lobulated", "irregular"],
               [0.65, 0.25, 0.07, 0.03], [0.20, 0.25, 0.30, 0.25]),
    "foci": (["none", "comet_tail", "macro", "punctate"],
             [0.60, 0.28, 0.09, 0.03], [0.35, 0.05, 0.15, 0.45]),
    "halo": (["no", "yes"], [0.55, 0.45], [0.90, 0.10]),
}
# Mean backscatter of the solid tissue for each echogenicity (thyroid ~0.62).
ECHO_LEVEL = {"hyper": 0.85, "iso": 0.60, "hypo": 0.33, "very_hypo": 0.15}


@dataclass(frozen=True)
class Nodule:
    composition: str
    echogenicity: str
    shape: str
    margin: str
    foci: str
    halo: str
    radius: float  # fraction of the image size
    aspect: float  # height / width
    angle: float   # small tilt, radians


def feature_probs(label: int, overlap: float) -> dict[str, tuple[list[str], np.ndarray]]:
    out = {}
    for name, (values, pb, pm) in FEATURES.items():
        pb, pm = np.asarray(pb), np.asarray(pm)
        pooled = (pb + pm) / 2
        p = (1 - overlap) * (pm if label else pb) + overlap * pooled
        out[name] = (values, p / p.sum())
    return out


def single_cue_auc(feature: str, overlap: float = 0.0) -> float:
    """Exact AUC of the best classifier that sees only `feature` (ordered by likelihood ratio)."""
    _, pb = feature_probs(0, overlap)[feature]
    _, pm = feature_probs(1, overlap)[feature]
    order = np.argsort(pm / np.maximum(pb, 1e-12))
    pb, pm = pb[order], pm[order]
    # P(score_malignant > score_benign) + 0.5 P(tie), categories ranked by LR
    below_b = np.concatenate([[0], np.cumsum(pb)[:-1]])
    return float(np.sum(pm * (below_b + 0.5 * pb)))


def sample_nodule(rng: np.random.Generator, label: int, overlap: float) -> Nodule:
    f = {k: str(rng.choice(v, p=p)) for k, (v, p) in feature_probs(label, overlap).items()}
    aspect = rng.uniform(1.2, 1.7) if f["shape"] == "taller" else rng.uniform(0.55, 0.9)
    return Nodule(radius=float(rng.uniform(0.17, 0.25)), aspect=float(aspect),
                  angle=float(rng.uniform(-0.3, 0.3)), **f)


def _nodule_mask(shape: tuple[int, int], S: float, cy: float, cx: float, n: Nodule,
                 rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of the nodule outline: an ellipse with a radial margin profile."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(n.angle), np.sin(n.angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    a = n.radius * S / np.sqrt(n.aspect)  # half width
    b = n.radius * S * np.sqrt(n.aspect)  # half height
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    theta = np.arctan2(v / b, u / a)
    prof = np.zeros_like(theta)
    if n.margin == "smooth" or n.margin == "ill_defined":
        harmonics, amp = range(2, 4), 0.03
    elif n.margin == "lobulated":
        harmonics, amp = range(3, 6), 0.13
    else:  # irregular: many harmonics, spiculated
        harmonics, amp = range(5, 13), 0.09
    for k in harmonics:
        prof += rng.uniform(0.4, 1.0) * amp * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return r <= 1.0 + prof


def _speckle(rng: np.random.Generator, shape: tuple[int, int], S: float) -> np.ndarray:
    """Rayleigh speckle with a lateral correlation longer than the axial one."""
    re = rng.standard_normal(shape).astype(np.float32)
    im = rng.standard_normal(shape).astype(np.float32)
    sig = (0.9 * S / 256, 2.2 * S / 256)  # (axial, lateral) in pixels
    re, im = ndimage.gaussian_filter(re, sig), ndimage.gaussian_filter(im, sig)
    env = np.sqrt(re ** 2 + im ** 2)
    return env / env.mean()


def tissue(rng: np.random.Generator, anatomy_rng: np.random.Generator, n: Nodule,
           shape: tuple[int, int], y0: float, y1: float, S: float) -> tuple[np.ndarray, np.ndarray, tuple]:
    """B-mode of the neck on a `shape` grid: (float image in [0, 1], bool nodule mask, its centre (y, x)).

    Rows y0..y1 span the imaged depth; S is the length scale of the anatomy in
    pixels (the simple layout's image size). Patient anatomy (shared by a
    patient's images) comes from anatomy_rng; probe placement, gain and speckle from rng.
    """
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    depth = (yy - y0) / (y1 - y0)

    def wavy(level, freq, amp):  # a tissue boundary that is not a straight line
        return level + amp * np.sin(2 * np.pi * (xx / S) * freq + anatomy_rng.uniform(0, 6.3))

    skin_b, fat_b, muscle_b = wavy(0.05, 1.3, 0.005), wavy(0.13, 1.1, 0.01), wavy(0.24, 0.9, 0.015)
    echo = np.full(shape, 0.35, np.float32)
    echo[depth < skin_b] = 0.95
    echo[(depth >= skin_b) & (depth < fat_b)] = 0.45
    muscle = (depth >= fat_b) & (depth < muscle_b)
    striae = 0.08 * np.sin(yy * 2 * np.pi / (S / 40))
    echo[muscle] = (0.28 + striae)[muscle]
    # Thyroid lobe: a wide ellipse under the strap muscles.
    lcx = W / 2 + rng.uniform(-0.06, 0.06) * S
    lcy = y0 + (0.52 + anatomy_rng.uniform(-0.03, 0.03)) * (y1 - y0)
    lobe = ((xx - lcx) / (0.40 * S)) ** 2 + ((yy - lcy) / (0.27 * (y1 - y0))) ** 2 <= 1
    lobe &= depth > muscle_b
    echo[lobe] = 0.62 + anatomy_rng.uniform(-0.05, 0.05)
    # Carotid artery at one side: anechoic, posterior enhancement.
    side = 1 if anatomy_rng.random() < 0.5 else -1
    ccx = lcx + side * 0.38 * S
    ccy = lcy + anatomy_rng.uniform(-0.05, 0.05) * S
    cr = anatomy_rng.uniform(0.06, 0.08) * S
    carotid = (xx - ccx) ** 2 + (yy - ccy) ** 2 <= cr ** 2
    behind_c = (np.abs(xx - ccx) < cr * 0.8) & (yy > ccy + cr)
    echo[behind_c] *= 1.25
    echo[carotid] = 0.02
    if anatomy_rng.random() < 0.6:  # tracheal ring on the other side: bright arc + shadow
        tcx, tcy, tr = lcx - side * 0.45 * S, y0 + 0.32 * (y1 - y0), 0.12 * S
        ring = np.abs(np.hypot(xx - tcx, yy - tcy) - tr) < 0.012 * S
        ring &= yy < tcy
        shadow = (np.abs(xx - tcx) < tr * 0.9) & (yy > tcy - 0.2 * tr)
        echo[shadow] *= 0.25
        echo[ring] = 1.0

    # Nodule, kept inside the lobe.
    ncx = lcx + rng.uniform(-0.17, 0.17) * S
    ncy = lcy + rng.uniform(-0.06, 0.06) * S
    mask = _nodule_mask(shape, S, ncy, ncx, n, anatomy_rng) & (depth > 0.2) & (depth < 0.97)
    solid = ECHO_LEVEL[n.echogenicity] + anatomy_rng.uniform(-0.04, 0.04)
    texture = ndimage.gaussian_filter(anatomy_rng.standard_normal(shape).astype(np.float32), S / 80)
    node = solid + 0.6 * texture
    cyst = np.zeros(shape, bool)
    if n.composition in ("cystic", "mixed", "spongiform"):
        blobs = ndimage.gaussian_filter(anatomy_rng.standard_normal(shape).astype(np.float32),
                                        S / (90 if n.composition == "spongiform" else 30))
        frac = {"cystic": 0.85, "mixed": 0.4, "spongiform": 0.45}[n.composition]
        cut = np.quantile(blobs[mask], 1 - frac) if mask.any() else 0
        cyst = mask & (blobs >= cut)
        if n.composition == "cystic":  # anechoic inside a thin wall
            cyst = ndimage.binary_erosion(mask, iterations=max(1, int(S) // 100))
    below = ndimage.binary_dilation(mask, np.ones((int(0.25 * S), 1), bool), origin=(-int(0.125 * S), 0))
    below &= ~mask
    if cyst.sum() > 0.3 * max(mask.sum(), 1):
        echo[below] *= 1.3  # posterior acoustic enhancement
    if n.halo == "yes":
        rim = ndimage.binary_dilation(mask, iterations=max(2, int(S) // 100)) & ~mask
        echo[rim] = 0.12
    echo[mask] = node[mask]
    echo[cyst] = 0.03
    if n.margin == "ill_defined":
        blurred = ndimage.gaussian_filter(echo, S / 110)
        it = max(1, int(S) // 40)
        zone = ndimage.binary_dilation(mask, iterations=it) & ~ndimage.binary_erosion(mask, iterations=it)
        echo[zone] = blurred[zone]
    ys, xs = np.nonzero(mask & ~cyst) if (mask & ~cyst).any() else np.nonzero(mask)
    dot = max(1, int(S) // 85)
    if n.foci == "punctate" and len(ys):
        for i in anatomy_rng.choice(len(ys), size=anatomy_rng.integers(6, 15)):
            echo[ys[i] - dot:ys[i] + dot + 1, xs[i] - dot:xs[i] + dot + 1] = 1.0
    elif n.foci == "comet_tail" and len(ys):
        for i in anatomy_rng.choice(len(ys), size=anatomy_rng.integers(1, 4)):
            for k in range(0, int(S) // 25, max(1, int(S) // 128)):  # reverberation tail
                echo[ys[i] + k:ys[i] + k + dot, xs[i] - dot:xs[i] + dot + 1] = 1.0 - 0.04 * k
    elif n.foci == "macro" and len(ys):
        i = anatomy_rng.integers(len(ys))
        rr = int(S) // 40
        calc = (xx - xs[i]) ** 2 + (yy - ys[i]) ** 2 <= rr ** 2
        shadow = (np.abs(xx - xs[i]) < rr) & (yy > ys[i])
        echo[shadow] *= 0.3
        echo[calc] = 1.0

    # Imaging chain: speckle, depth attenuation with imperfect TGC, log compression.
    gain = rng.uniform(0.8, 1.2)
    tgc = 1.0 - rng.uniform(0.1, 0.35) * depth.clip(0, 1)
    env = np.clip(echo, 0, 1.2) * _speckle(rng, shape, S) * tgc * gain
    img = np.log1p(25 * env) / np.log1p(25 * 1.6)
    img = np.clip(img + rng.normal(0, 0.015, img.shape), 0, 1)
    return img, mask, (ncy, ncx)


def render(rng: np.random.Generator, S: int, label: int, n: Nodule,
           anatomy_rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """The simple layout: (uint8 image S x S, bool nodule mask, screen facts for the manifest)."""
    y0, y1 = int(0.10 * S), int(0.96 * S)
    x0 = int(rng.uniform(0.08, 0.14) * S)
    x1 = S - int(rng.uniform(0.08, 0.14) * S)
    img, mask, (ncy, ncx) = tissue(rng, anatomy_rng, n, (S, S), y0, y1, S)
    img[:, :x0] = img[:, x1:] = 0
    img[:y0] = img[y1:] = 0
    out = Image.fromarray((img * 255).astype(np.uint8), mode="L")
    screen.simple_overlay(out, rng, S, x0, x1, y0, y1)
    calipers = rng.random() < 0.15  # placed by the sonographer
    if calipers:
        d = ImageDraw.Draw(out)
        hw = n.radius * S / np.sqrt(n.aspect)
        for px in (ncx - hw, ncx + hw):
            d.text((px - 3, ncy - 6), "+", fill=230)
    return np.asarray(out), mask, {"field_boxes": [[y0, x0, y1, x1]], "field_kind": "linear", "panes": 1,
                                   "calipers": int(calipers), "category_text": "", "scanner": "THYRO-US"}


def render_screen(rng: np.random.Generator, S: int, label: int, n: Nodule, anatomy_seed: int,
                  preset: screen.Preset, shortcuts: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """The scanner layout: (uint8 RGB screen S x W, bool nodule mask, bool field mask, screen facts)."""
    lay = screen.plan(rng, S, preset, dual=rng.random() < screen.DUAL_RATE)
    canvas = np.zeros((lay.H, lay.W), np.float32)
    nodule, fields = np.zeros((lay.H, lay.W), bool), np.zeros((lay.H, lay.W), bool)
    second_gain = rng.random() < 0.5  # dual screens: same view at two gains, or TRV + a second view
    first = None
    for i, pane in enumerate(lay.panes):
        h, w = pane.tissue_shape
        if i == 0 or not second_gain:
            # S/0.86: the anatomy keeps the simple layout's proportions to the imaged depth.
            img, mask, _ = tissue(rng, np.random.default_rng(anatomy_seed), n, (h, w), 0, h, h / 0.86)
            if i:
                img, mask = img[:, ::-1], mask[:, ::-1]
        else:
            img = np.clip(img + rng.choice([-1, 1]) * rng.uniform(0.08, 0.15), 0, 1)
        pane_mask = screen.place(canvas, nodule, fields, pane, img, mask)
        first = pane_mask if first is None else first
    out = Image.fromarray((canvas * 255).astype(np.uint8), mode="L").convert("RGB")
    calipers = rng.random() < screen.class_rate(screen.CALIPERS, label, shortcuts)
    category = screen.category_text(rng, label, shortcuts)
    screen.draw(out, rng, lay, first, calipers, category)
    info = {"field_boxes": [list(p.box) for p in lay.panes], "field_kind": preset.field_kind,
            "panes": len(lay.panes), "calipers": int(calipers), "category_text": category,
            "scanner": preset.name}
    return np.asarray(out), nodule, fields, info


def _patients(n_benign: int, n_malignant: int, rng: np.random.Generator,
              multi_fraction: float, max_per: int) -> list[tuple[int, int]]:
    """[(label, n_images)] so that the image counts per class are exact."""
    out = []
    for label, total in ((0, n_benign), (1, n_malignant)):
        left = total
        while left > 0:
            k = 1
            if max_per > 1 and rng.random() < multi_fraction:
                k = int(rng.integers(2, max_per + 1))
            k = min(k, left)
            out.append((label, k))
            left -= k
    return out


LAYOUTS = ("simple", "scanner")


def generate(out_dir: str | Path, n_benign: int = 415, n_malignant: int = 93, size: int = 256,
             seed: int = 0, overlap: float = 0.0, multi_image_fraction: float = 0.0,
             max_images_per_patient: int = 3, layout: str = "simple", shortcuts: float = 0.0) -> Path:
    """Write the phantom to `out_dir` (images/, masks/, fields/, manifest.csv); return the manifest path.

    layout "simple": one square grey image per scan (the historical phantom);
    "scanner": RGB screens of varying aspect with scanner overlays, whose
    dependence on the class is `shortcuts` (0: none, 1: strong).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"phantom layout {layout!r}: expected one of {LAYOUTS}")
    if not 0.0 <= shortcuts <= 1.0:
        raise ValueError(f"phantom shortcuts {shortcuts}: expected a number in [0, 1]")
    out = Path(out_dir)
    for sub in ("images", "masks", "fields"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    plan = _patients(n_benign, n_malignant, np.random.default_rng([seed, 0]),
                     multi_image_fraction, max_images_per_patient)
    # Interleave classes so file order carries no label information.
    order = np.random.default_rng([seed, 1]).permutation(len(plan))
    rows = []
    for pnum, pi in enumerate(order):
        label, k = plan[pi]
        pid = f"P{pnum:05d}"
        prng = np.random.default_rng([seed, 2, pnum])
        nodule = sample_nodule(prng, label, overlap)
        anatomy_seed = int(prng.integers(2**31))
        # A patient is scanned at one centre, on one scanner.
        preset = screen.choose_preset(np.random.default_rng([seed, 4, pnum]), label, shortcuts)
        for v in range(k):
            rng = np.random.default_rng([seed, 3, pnum, v])
            if layout == "simple":
                img, mask, info = render(rng, size, label, nodule, np.random.default_rng(anatomy_seed))
                fields = np.zeros_like(mask)
                y0, x0, y1, x1 = info["field_boxes"][0]
                fields[y0:y1, x0:x1] = True
            else:
                img, mask, fields, info = render_screen(rng, size, label, nodule, anatomy_seed, preset,
                                                           shortcuts)
            name = f"{pid}_{v}.png"
            Image.fromarray(img).save(out / "images" / name, optimize=False)
            Image.fromarray((mask * 255).astype(np.uint8), mode="L").save(out / "masks" / name)
            Image.fromarray((fields * 255).astype(np.uint8), mode="L").save(out / "fields" / name)
            row = {"path": f"images/{name}", "label": "malignant" if label else "benign",
                   "patient_id": pid, "mask_path": f"masks/{name}"}
            row.update({k2: v2 for k2, v2 in asdict(nodule).items() if k2 in FEATURES})
            row.update(layout=layout, field_mask_path=f"fields/{name}", **info)
            row["field_boxes"] = json.dumps(info["field_boxes"])
            rows.append(row)
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest
