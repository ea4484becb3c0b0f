"""Scanner screens around the phantom's B-mode fields.

A real scanner screen is more than the image: burned-in text (scanner, date,
patient ID, settings, sometimes the TI-RADS category), a depth scale, a
grey-scale bar, a body-marker pictogram, a logo, calipers on the nodule the
sonographer worried about, one or two panes, black borders; aspect and field
geometry vary by scanner. A model trained on screens can learn the screen
instead of the nodule, so the phantom can draw them, and `shortcuts` (0..1)
makes the overlays depend on the class as they do in clinical archives:
calipers and a high category string go with malignant nodules, and the scanner
(hence logo, layout family and field kind) correlates with the class because
referral centres see different case mixes. At 0 every overlay is drawn from
the same distribution for both classes.

This module plans the geometry (`plan`), maps a rectangular B-mode into a
linear or convex (sector) field (`place`) and draws the overlays (`draw`);
`thyro.data.phantom` renders the tissue.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ASPECTS = (4 / 3, 16 / 10, 16 / 9, 5 / 4)  # screen width / height


@dataclass(frozen=True)
class Preset:
    name: str        # model string burned into the header
    logo: str
    field_kind: str  # "linear" | "sector"
    family: str      # "topbar": settings in the header; "sidepanel": in a left column
    logo_rgb: tuple[int, int, int]


PRESETS = (
    Preset("ACUSONIX S3000 L18-4", "ACUSONIX", "linear", "topbar", (120, 170, 255)),
    Preset("ECHOTEK E8 L14", "echotek", "linear", "sidepanel", (255, 160, 60)),
    Preset("KESTREL CX50 C9-2", "KESTREL", "sector", "topbar", (215, 215, 215)),
    Preset("ULTRAVUE 5 C8-3", "UltraVue", "sector", "sidepanel", (90, 220, 200)),
    Preset("MEDISCAN MX7 L12", "MEDISCAN", "linear", "topbar", (230, 230, 120)),
)
# Which scanner a (benign, malignant) nodule is seen on when shortcuts = 1:
# malignant ones mostly on the referral centre's convex scanners.
PRESET_P = (np.array([0.35, 0.25, 0.05, 0.05, 0.30]), np.array([0.05, 0.10, 0.45, 0.35, 0.05]))
# (rate at shortcuts = 0 for both classes, (benign, malignant) rates at shortcuts = 1)
CALIPERS = (0.4, (0.1, 0.9))
CATEGORY = (0.25, (0.1, 0.8))
DUAL_RATE = 0.25  # dual-pane screens, independent of the class
CATEGORIES = (("TR2", "TR3"), ("TR4", "TR5"))
CALIPER_RGB = ((235, 235, 235), (250, 225, 40), (70, 230, 90), (80, 220, 240))


def class_rate(spec: tuple[float, tuple[float, float]], label: int, shortcuts: float) -> float:
    base, at_one = spec
    return (1 - shortcuts) * base + shortcuts * at_one[label]


def choose_preset(rng: np.random.Generator, label: int, shortcuts: float) -> Preset:
    p = (1 - shortcuts) / len(PRESETS) + shortcuts * PRESET_P[label]
    return PRESETS[int(rng.choice(len(PRESETS), p=p / p.sum()))]


def category_text(rng: np.random.Generator, label: int, shortcuts: float) -> str:
    """"" or a burned-in category; with probability `shortcuts` it follows the class."""
    # Always the same draws, so the class cannot leak through the random stream.
    shown = rng.random() < class_rate(CATEGORY, label, shortcuts)
    follows = rng.random() < shortcuts
    k, j = int(rng.integers(2)), int(rng.integers(4))
    if not shown:
        return ""
    return CATEGORIES[label][k] if follows else (CATEGORIES[0] + CATEGORIES[1])[j]


def simple_overlay(img: Image.Image, rng: np.random.Generator, S: int, x0: int, x1: int, y0: int, y1: int) -> None:
    """The simple layout's fixed overlay: text, depth scale and focus marker; independent of the class."""
    d = ImageDraw.Draw(img)
    depth_cm = rng.choice([3.0, 3.5, 4.0, 4.5])
    d.text((4, 2), f"THYRO-US L12-5  {rng.integers(20, 40)}Hz", fill=200)
    d.text((4, 2 + S // 24), f"THY {'R' if rng.random() < 0.5 else 'L'} TRV  G{rng.integers(40, 70)}", fill=200)
    d.text((x1 - 40 if x1 > 60 else 2, S - S // 20), f"{depth_cm:.1f}cm", fill=200)
    for k in range(int(depth_cm * 2) + 1):  # tick every 0.5 cm along the right edge
        y = y0 + (y1 - y0) * k / (depth_cm * 2)
        d.line([(x1 + 2, y), (x1 + (6 if k % 2 == 0 else 4), y)], fill=220)
    fy = y0 + (y1 - y0) * rng.uniform(0.4, 0.7)
    d.polygon([(x1 + 10, fy), (x1 + 16, fy - 3), (x1 + 16, fy + 3)], fill=220)


@dataclass
class Pane:
    box: tuple[int, int, int, int]  # y0, x0, y1, x1 on the screen, end-exclusive
    kind: str
    tissue_shape: tuple[int, int]   # (depth rows, lateral columns) of the B-mode rendered for it
    apex: tuple[float, float] = (0.0, 0.0)  # sector only: virtual apex, radii, half-angle
    r0: float = 0.0
    r1: float = 0.0
    alpha: float = 0.0

    @property
    def depth_px(self) -> float:
        return self.r1 - self.r0 if self.kind == "sector" else self.box[2] - self.box[0]


@dataclass
class Layout:
    H: int
    W: int
    preset: Preset
    panes: list[Pane]
    margins: dict = field(default_factory=dict)  # top, bottom, left, right in pixels


def plan(rng: np.random.Generator, H: int, preset: Preset, dual: bool) -> Layout:
    W = int(round(H * ASPECTS[int(rng.integers(len(ASPECTS)))]))
    top, bottom = int(H * rng.uniform(0.09, 0.15)), int(H * rng.uniform(0.04, 0.10))
    left = int(W * (rng.uniform(0.15, 0.21) if preset.family == "sidepanel" else rng.uniform(0.03, 0.10)))
    right = int(W * rng.uniform(0.08, 0.13))
    n, gap = (2, int(W * 0.015)) if dual else (1, 0)
    pane_w = (W - left - right - gap * (n - 1)) // n
    avail = H - top - bottom
    # One geometry for both panes: a dual screen repeats the same settings.
    fill, ratio = rng.uniform(0.8, 1.0), rng.uniform(1.0, 1.45)
    k, alpha = rng.uniform(0.15, 0.4), rng.uniform(0.35, 0.6)
    jy, jx = rng.random(), rng.random()
    panes = []
    for i in range(n):
        px0 = left + i * (pane_w + gap)
        if preset.field_kind == "linear":
            fh = int(avail * fill)
            fw = min(pane_w, int(fh * ratio))
            fh = min(fh, int(fw / 0.9))  # keep the field about square or wider
            y0 = top + int((avail - fh) * jy * 0.5)
            x0 = px0 + int((pane_w - fw) * jx)
            panes.append(Pane((y0, x0, y0 + fh, x0 + fw), "linear", (fh, fw)))
        else:
            r1 = min(avail * fill / (1 - k * np.cos(alpha)), pane_w / (2 * np.sin(alpha)))
            r0 = k * r1
            half = r1 * np.sin(alpha)
            ay = top + (avail - (r1 - r0 * np.cos(alpha))) * jy * 0.5 - r0 * np.cos(alpha)
            ax = px0 + pane_w / 2 + (pane_w - 2 * half) * (jx - 0.5)
            box = (int(np.floor(ay + r0 * np.cos(alpha))), int(np.floor(ax - half)),
                   int(np.ceil(ay + r1)) + 1, int(np.ceil(ax + half)) + 1)
            box = (max(box[0], 0), max(box[1], 0), min(box[2], H), min(box[3], W))
            shape = (int(round(r1 - r0)), int(round(alpha * (r0 + r1))))
            panes.append(Pane(box, "sector", shape, (ay, ax), r0, r1, alpha))
    return Layout(H, W, preset, panes, {"top": top, "bottom": bottom, "left": left, "right": right})


def place(canvas: np.ndarray, nodule: np.ndarray, fields: np.ndarray, pane: Pane,
          img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Write a pane's B-mode and nodule mask into the screen arrays; return the pane's screen mask."""
    y0, x0, y1, x1 = pane.box
    pane_mask = np.zeros_like(nodule)
    if pane.kind == "linear":
        canvas[y0:y1, x0:x1] = img
        pane_mask[y0:y1, x0:x1] = mask
        fields[y0:y1, x0:x1] = True
    else:
        # Convex probe: screen pixel -> (radius, angle) -> (depth row, lateral column).
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy + 0.5 - pane.apex[0], xx + 0.5 - pane.apex[1]
        r, theta = np.hypot(dy, dx), np.arctan2(dx, dy)
        inside = (r >= pane.r0) & (r < pane.r1) & (np.abs(theta) <= pane.alpha)
        h, w = img.shape
        rows = np.clip(((r - pane.r0) / (pane.r1 - pane.r0) * h).astype(int), 0, h - 1)
        cols = np.clip(((theta + pane.alpha) / (2 * pane.alpha) * w).astype(int), 0, w - 1)
        canvas[y0:y1, x0:x1] = np.where(inside, img[rows, cols], 0)
        pane_mask[y0:y1, x0:x1] = inside & mask[rows, cols]
        fields[y0:y1, x0:x1] |= inside
    nodule |= pane_mask
    return pane_mask


@functools.lru_cache(maxsize=16)
def _font(px: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=px)


def _scaled(lay: Layout, f: int) -> Layout:
    panes = [Pane(tuple(v * f for v in p.box), p.kind, p.tissue_shape, (p.apex[0] * f, p.apex[1] * f),
                  p.r0 * f, p.r1 * f, p.alpha) for p in lay.panes]
    return Layout(lay.H * f, lay.W * f, lay.preset, panes, {k: v * f for k, v in lay.margins.items()})


def draw(out: Image.Image, rng: np.random.Generator, lay: Layout, nodule: np.ndarray,
         calipers: bool, category: str) -> None:
    """Burn the overlays into the RGB screen `out`; `nodule` is the first pane's nodule mask."""
    # Small screens get their overlays drawn at >= 256 rows and reduced, as a
    # downsampled real screen shows blurred text rather than a few huge glyphs.
    f = -(-256 // lay.H)
    if f == 1:
        return _draw(out, rng, lay, nodule, calipers, category)
    layer = Image.new("RGBA", (lay.W * f, lay.H * f), (0, 0, 0, 0))
    _draw(layer, rng, _scaled(lay, f), np.kron(nodule, np.ones((f, f), bool)), calipers, category)
    layer = layer.resize((lay.W, lay.H), Image.Resampling.BOX)
    out.paste(Image.alpha_composite(out.convert("RGBA"), layer).convert("RGB"))


def _draw(out: Image.Image, rng: np.random.Generator, lay: Layout, nodule: np.ndarray,
          calipers: bool, category: str) -> None:
    d = ImageDraw.Draw(out)
    H, W, m, pre = lay.H, lay.W, lay.margins, lay.preset
    fs = max(8, int(round(H * rng.uniform(0.035, 0.05))))
    font, small = _font(fs), _font(max(7, fs - 2))
    text = (200, 200, 200)
    # Header: scanner, patient ID, date; the logo in the other corner.
    date = f"{rng.integers(2012, 2025)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d}"
    header = [f"{pre.name}  {rng.integers(20, 45)}Hz", f"ID {rng.integers(10**6, 10**8)}  {date}"]
    logo_right = rng.random() < 0.5
    hx = 4 if logo_right else W // 3
    for i, line in enumerate(header):
        d.text((hx, 2 + i * (fs + 1)), line, fill=text, font=small)
    lf = _font(max(8, int(fs * 1.3)))
    lx = W - int(d.textlength(pre.logo, font=lf)) - 6 if logo_right else 4
    d.text((lx, 2), pre.logo, fill=pre.logo_rgb, font=lf)
    settings = [f"Gn {rng.integers(30, 75)}", f"DR {rng.integers(50, 80)}", f"FR {rng.integers(12, 40)}",
                f"MI {rng.uniform(0.4, 1.3):.1f}", f"TIS {rng.uniform(0.1, 0.9):.1f}",
                f"{rng.integers(7, 19)}MHz"]
    # Depth scale (tick every 0.5 cm, numbers every cm) and focus marker right of each pane.
    depth_cm = float(rng.choice([3.0, 3.5, 4.0, 4.5, 5.0]))
    for p in lay.panes:
        y_top = p.apex[0] + p.r0 if p.kind == "sector" else p.box[0]
        px_cm = p.depth_px / depth_cm
        xr = min(p.box[3] + 2, W - 8)
        for k in range(int(depth_cm * 2) + 1):
            y = y_top + k * px_cm / 2
            d.line([(xr, y), (xr + (5 if k % 2 == 0 else 3), y)], fill=(220, 220, 220))
            if k % 2 == 0 and k and fs <= px_cm:
                d.text((xr + 6, y - fs // 2), str(k // 2), fill=text, font=small)
        fy = y_top + p.depth_px * rng.uniform(0.4, 0.7)
        d.polygon([(xr - 1, fy), (xr + 5, fy - 3), (xr + 5, fy + 3)], fill=(220, 220, 220))
    # Grey-scale bar at the right edge.
    bw, by0 = max(3, W // 90), m["top"] + int(rng.uniform(0, 0.1) * H)
    bh = int(H * rng.uniform(0.25, 0.4))
    ramp = np.linspace(255, 0, bh).astype(np.uint8)[:, None].repeat(bw, 1)
    out.paste(Image.fromarray(ramp, mode="L").convert(out.mode), (W - bw - 3, by0))
    # Body marker: neck cross-section, trachea and the probe on the skin, in a bottom corner.
    bs = max(10, H // 9)
    marker_left = rng.random() < 0.5
    bx = 3 if marker_left else W - m["right"] - bs - 4
    by = H - bs - 3
    d.ellipse([bx, by + bs * 0.15, bx + bs, by + bs * 0.95], outline=(170, 170, 170))
    d.ellipse([bx + bs * 0.4, by + bs * 0.2, bx + bs * 0.6, by + bs * 0.4], outline=(170, 170, 170))
    side = rng.uniform(0.12, 0.35) * (1 if rng.random() < 0.5 else -1)
    px, pw = bx + bs * (0.5 + side), bs * 0.22
    d.line([(px - pw, by + bs * 0.1), (px + pw, by + bs * 0.1)], fill=(240, 240, 90), width=max(2, bs // 12))
    # Settings: a column on the left (sidepanel family) or one line under the fields.
    if pre.family == "sidepanel":
        for i, line in enumerate(settings):
            d.text((3, m["top"] + 4 + i * (fs + 2)), line, fill=text, font=small)
    else:
        sx = max(m["left"], bs + 8) if marker_left else m["left"]
        d.text((sx, H - m["bottom"] // 2 - fs // 2), "  ".join(settings[:4]), fill=text, font=small)
    # Pane labels inside the fields.
    for i, p in enumerate(lay.panes):
        lab = f"THY {'R' if rng.random() < 0.5 else 'L'} {'LONG' if i else 'TRV'}"
        d.text((p.box[1] + 3, p.box[2] - fs - 3), lab, fill=text, font=small)
    if category:
        cx0 = m["left"] if rng.random() < 0.5 else lay.panes[0].box[1] + 3
        d.text((cx0, lay.panes[0].box[0] + 2), f"TI-RADS {category}" if rng.random() < 0.5 else category,
               fill=(250, 225, 40) if rng.random() < 0.5 else text, font=font)
    if calipers and nodule.any():
        _calipers(d, rng, lay, nodule, depth_cm, font)


def _calipers(d: ImageDraw.ImageDraw, rng: np.random.Generator, lay: Layout, nodule: np.ndarray,
              depth_cm: float, font) -> None:
    """'+' or 'x' marks at the nodule's edges, dotted lines between them, and the lengths."""
    ys, xs = np.nonzero(nodule)
    cy, cx = int(round(ys.mean())), int(round(xs.mean()))
    row, col = np.nonzero(nodule[cy])[0], np.nonzero(nodule[:, cx])[0]
    pairs = []
    if len(row):
        pairs.append(((cy, row.min()), (cy, row.max())))
    if len(col) and rng.random() < 0.6:
        pairs.append(((col.min(), cx), (col.max(), cx)))
    rgb = CALIPER_RGB[int(rng.integers(len(CALIPER_RGB)))]
    shape_x, s = rng.random() < 0.4, max(3, lay.H // 70)
    p0 = lay.panes[0]
    px_cm = p0.depth_px / depth_cm
    labels = []
    for i, ((ya, xa), (yb, xb)) in enumerate(pairs):
        for y, x in ((ya, xa), (yb, xb)):
            if shape_x:
                d.line([(x - s, y - s), (x + s, y + s)], fill=rgb)
                d.line([(x - s, y + s), (x + s, y - s)], fill=rgb)
            else:
                d.line([(x - s, y), (x + s, y)], fill=rgb)
                d.line([(x, y - s), (x, y + s)], fill=rgb)
        n = max(2, int(np.hypot(yb - ya, xb - xa) // 4))
        for t in np.linspace(0, 1, n)[1:-1]:
            d.point((xa + t * (xb - xa), ya + t * (yb - ya)), fill=rgb)
        labels.append(f"D{i + 1} {np.hypot(yb - ya, xb - xa) / px_cm:.2f} cm")
    fs = font.size
    # Lengths at the field's lower or upper right corner, inside it.
    x = p0.box[3] - int(lay.W * 0.16)
    y0 = p0.box[2] - (len(labels) + 1) * (fs + 2) if rng.random() < 0.5 else p0.box[0] + fs + 4
    for i, lab in enumerate(labels):
        d.text((x, y0 + i * (fs + 2)), lab, fill=rgb, font=_font(max(7, fs - 2)))
