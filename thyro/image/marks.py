"""Annotation marks inside the scan field: find them and paint them out.

Clinicians place calipers (+ and x marks, dotted lines) and measurement text on
the nodules they worry about, so a model can learn the marks instead of the
tissue. Marks are drawn, not imaged: crisp 1-3 px strokes, white or coloured
(yellow, green, cyan) where B-mode is grey. Once a screen is resampled (BUSI's
copy was shrunk to 256 px) a white stroke is no longer white (180-230), so the
detector does not rely on absolute levels but on shape and local contrast:

- a stroke is thin across and long along one of four directions: a directional
  white top-hat (what a short line *across* the direction removes) opened by a
  line *along* it. Tissue is blurred by the imaging system: speckle grains and
  punctate calcifications, however bright, are as wide as the point-spread
  function and too short to survive the opening; ultrasound's specular lines
  are long but horizontal only;
- a caliper is a *cross*: four short arms (+ or x) from one centre, each ending
  within a few px. A calcification has no arms, a tissue streak runs on in one
  direction. Strokes must beat the tissue's own, per direction (its 99th
  percentile): some scanners smear speckle into short horizontal streaks;
- a caliper's digit and the rest of its strokes: as bright as its arms, touching them;
- dotted measuring lines are rows of dots, each like a calcification; they are
  taken only where they run between two crosses;
- text: a row of vertical strokes with one cap height, baseline and grey level,
  plus the glyphs between them;
- saturated strokes (drawn at full white on the screen's own resolution) and
  coloured pixels are found as before, by level.

Scale: the px sizes below are for a ~256 px image (1-2 px strokes, crosses 9-17 px
across) and double from ~384 px on (`scale`); not more, as scanners draw 1-2 px
strokes at any screen size. Images under 200 px (a screen shrunk so far that a
stroke is a grey smear) are also searched enlarged twice.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

SATURATED = 235  # grey level; marks drawn at or near full white
STRONG_CONTRAST = 110  # grey levels a saturated stroke stands above its 5x5 median (speckle grains: 99.9% below 128)
WEAK_CONTRAST = 50  # ... where it crosses brighter tissue, if joined to a strong stroke pixel
CHROMA = 60  # max(R, G, B) - min(R, G, B); B-mode is grey (chroma ~0)
ARM = 5  # px: the shortest stroke that counts as an arm (a 1-px gap, e.g. a cross's centre, is bridged)
STROKE_CONTRAST = 20  # grey levels a stroke stands above the tissue beside it (calipers on BUSI: 27-113)...
TEXTURE = 1.0  # ... or this many times the tissue's local standard deviation, if more (BUSI: 4-18)...
TISSUE_STROKES = 0.8  # ... and, per direction, this many times the tissue's own stroke response at
TISSUE_PERCENTILE = 99  # this percentile
ARM_REACH = 2  # px: each of a cross's four arms is a stroke from 2 to this many px off its centre
ARM_END = 8  # px: ... and ends within this many px (tissue streaks run on)
REACH = 2 * ARM  # px: a dotted line's profile starts this far from the crosses it joins
MAX_CROSSES = 24  # a screen carries a few pairs of calipers, never dozens
DOTTED = 2.0  # a dotted line between two crosses: mean stroke response on it / beside it
TEXT_GLYPHS = 3  # vertical strokes on one baseline that make a line of text
TEXT_INK = 0.5  # most a text line's box its strokes fill
SMALL = 200  # px: images with a shorter side are also searched enlarged twice
MAX_SCALE = 2  # px per px at 256: larger screens still draw strokes of 1-2 px
INPAINT_RADIUS = 3


def _at_least(a: np.ndarray, t: float) -> np.ndarray:
    """a >= t for uint8 `a`, compared in uint8 (a whole number is >= t iff >= ceil(t)): no float64 copy of `a`."""
    c = math.ceil(t)
    if c > 255:
        return np.zeros(a.shape, bool)
    return a >= np.uint8(max(c, 0))


def _line(n: int, direction: int) -> np.ndarray:
    """A 1-px line kernel of length n: 0 horizontal, 1 vertical, 2 diagonal, 3 anti-diagonal."""
    return [np.ones((1, n), np.uint8), np.ones((n, 1), np.uint8), np.eye(n, dtype=np.uint8),
            np.eye(n, dtype=np.uint8)[::-1].copy()][direction]


def stroke_response(grey: np.ndarray, u: int = 1) -> np.ndarray:
    """(4, H, W) uint8: per direction, how far a thin, >= ARM * u px long stroke stands above the tissue beside it.

    Thin: a short line across the stroke does not fit inside it (a white top-hat). A
    diagonal stroke must also be thin horizontally and vertically: the stacked, slightly
    oblique streaks of bright tissue near the skin are thin along one diagonal but not
    across the rows.
    """
    tophat = [cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, _line(2 * u + 1, d)) for d in range(4)]
    out = np.empty((4,) + grey.shape, np.uint8)
    for d, across in enumerate(((1,), (0,), (0, 1, 3), (0, 1, 2))):
        thin = np.minimum.reduce([tophat[e] for e in across])
        thin = cv2.morphologyEx(thin, cv2.MORPH_CLOSE, _line(u + 2, d))  # bridge a u px gap (a cross's centre)
        out[d] = cv2.morphologyEx(thin, cv2.MORPH_OPEN, _line(ARM * u, d))
    return out


def _crosses(resp: np.ndarray, t: np.ndarray, u: int = 1) -> np.ndarray:
    """Boolean mask of cross centres: four arms, each a stroke along its direction, radiating from one pixel.

    A "+" needs left, right, up and down arms; an "x" the four diagonal ones. A tissue
    streak has two arms at most, a calcification none, two streaks that touch three.
    """
    h, w = resp.shape[1:]
    out = np.zeros((h, w), bool)
    # a centre off by one across the arm; both arms of a direction share it
    strong = [_at_least(cv2.dilate(resp[d], _line(2 * u + 1, (1, 0, 3, 2)[d])), t[d]) for d in range(4)]
    # An arm off the image fails (there its value is 0), so centres lie m px inside the border.
    m = ARM_REACH * u
    if h <= 2 * m or w <= 2 * m:
        return out
    # (direction, step) per arm; _line's directions: 0 horizontal, 1 vertical, 2 diagonal, 3 anti-diagonal
    for arms in (((0, (0, 1)), (0, (0, -1)), (1, (1, 0)), (1, (-1, 0))),
                 ((2, (1, 1)), (2, (-1, -1)), (3, (-1, 1)), (3, (1, -1)))):
        # the arm: from 2 px off the centre (its neighbour may be dimmed by the other stroke) ...
        found = np.ones((h - 2 * m, w - 2 * m), bool)
        for d, (dy, dx) in arms:
            for s in range(2 * u, m + 1):
                found &= strong[d][m + s * dy:h - m + s * dy, m + s * dx:w - m + s * dx]
        ys, xs = np.nonzero(found)
        ys, xs = ys + m, xs + m
        # ... to its end within ARM_END px: a caliper's arms are short, a tissue streak runs on.
        # Few pixels have all four arms, so the tails are read there only; off the image counts 0.
        for d, (dy, dx) in arms:
            steps = np.arange(m + 1, ARM_END * u + 1)[:, None]
            y, x = ys[None] + steps * dy, xs[None] + steps * dx
            inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
            tail = np.where(inside, resp[d][np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)], 0).min(axis=0,
                                                                                              initial=255)
            ok = tail < t[d] / 2
            ys, xs = ys[ok], xs[ok]
        out[ys, xs] = True
    return out


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """cv2.connectedComponentsWithStats(mask, connectivity=8) of a sparse uint8 mask; row 0 (background) left zero.

    OpenCV also accumulates statistics over every background pixel: most of its cost on
    a sparse mask. The labels are connectedComponents' (the same algorithm); boxes, areas
    and centroids (integer coordinate sums divided once by the area) come out the same.
    """
    n, labels = cv2.connectedComponents(mask, connectivity=8)
    stats, centroids = np.zeros((n, 5), np.int32), np.zeros((n, 2))
    pts = cv2.findNonZero(mask)
    if pts is None:
        return n, labels, stats, centroids
    xs, ys = pts.reshape(-1, 2).T
    lab = labels[ys, xs]
    area = np.bincount(lab, minlength=n)
    for i, c in enumerate((xs, ys)):
        lo, hi = np.full(n, np.iinfo(np.int32).max, np.int32), np.zeros(n, np.int32)
        np.minimum.at(lo, lab, c)
        np.maximum.at(hi, lab, c)
        stats[1:, i], stats[1:, 2 + i] = lo[1:], (hi - lo + 1)[1:]
        centroids[1:, i] = np.bincount(lab, weights=c.astype(np.int64), minlength=n)[1:] / area[1:]
    stats[:, cv2.CC_STAT_AREA] = area
    stats[0] = 0
    return n, labels, stats, centroids


def _dotted(spots: np.ndarray, centres: np.ndarray, t: float, u: int = 1) -> np.ndarray:
    """Dotted lines: segments between two cross centres much brighter in small spots than their parallels."""
    out = np.zeros(spots.shape, np.uint8)
    pts = _components(centres.astype(np.uint8))[3][1:]
    h, w = spots.shape
    # the line may run a pixel off the straight path between the two centres
    loose = cv2.dilate(spots, np.ones((3, 3), np.uint8))

    def dotted(a, b, length):
        """The pairs (a, b) of these whose segment is a dotted line."""
        # Each pair's np.linspace(0, 1, int(length) + 1), concatenated: k / (n - 1), the last exactly 1
        num = length.astype(int) + 1
        pair = np.repeat(np.arange(len(a)), num)
        first = np.cumsum(num) - num
        frac = (np.arange(num.sum()) - first[pair]) * (1.0 / (num - 1))[pair]
        frac[first + num - 1] = 1.0
        arms = (frac * length[pair] > REACH * u) & ((1 - frac) * length[pair] > REACH * u)  # the crosses' arms aside
        frac, pair = frac[arms], pair[arms]
        normal = np.stack([a[:, 1] - b[:, 1], b[:, 0] - a[:, 0]], axis=1) / length[:, None]

        def mean_along(offsets):
            """Per pair, the mean of `loose` along its segment moved by offsets (pairs, 2)."""
            p = along + offsets[pair]
            x = np.clip(np.round(p[:, 0]).astype(int), 0, w - 1)
            y = np.clip(np.round(p[:, 1]).astype(int), 0, h - 1)
            return np.bincount(pair, weights=loose[y, x], minlength=len(a)) / count

        along, count = a[pair] + frac[:, None] * (b - a)[pair], np.bincount(pair, minlength=len(a))
        on = mean_along(0 * normal)
        bright = on >= t / 2  # the others are too faint whatever lies beside them
        a, b, on, normal = a[bright], b[bright], on[bright], normal[bright]
        along, pair, count = along[bright[pair]], (np.cumsum(bright) - 1)[pair[bright[pair]]], count[bright]
        # the median of six parallels: a second measuring line or a tissue edge may run beside it
        beside = np.maximum(np.median([mean_along(o * normal) for o in (-7, -5, -3, 3, 5, 7)], axis=0), 1.0)
        keep = on >= DOTTED * beside
        return a[keep], b[keep]

    # All pairs of centres at once (a screen's letters can make a few dozen crosses) ...
    i, j = np.triu_indices(len(pts), 1)
    a, b = pts[i], pts[j]
    length = np.hypot(b[:, 0] - a[:, 0], b[:, 1] - a[:, 1])
    long = length >= 3 * REACH * u
    a, b, length = a[long], b[long], length[long]
    # ... in batches of about 2**20 points along them: a centre split by text can make hundreds
    batch = max(1, (1 << 20) // (int(length.max()) + 1)) if len(a) else 1
    for k in range(0, len(a), batch):
        for p, q in zip(*dotted(a[k:k + batch], b[k:k + batch], length[k:k + batch])):
            cv2.line(out, tuple(int(round(v)) for v in p), tuple(int(round(v)) for v in q), 1, 1)
    return out.astype(bool)


def _text_lines(grey: np.ndarray, resp: np.ndarray, spots: np.ndarray, t: float, t_vertical: float,
                u: int = 1) -> np.ndarray:
    """Burned-in text: a row of >= TEXT_GLYPHS thin vertical strokes of a glyph's height on one baseline.

    Letters have vertical strokes (l, t, 1, E, R...) standing on a common baseline; tissue
    has thin vertical strokes rarely and never in a row. The line then takes in the
    glyphs without one (A, X, 2) along its band: small bright spots as bright as its
    strokes (text is drawn in one colour), less than a glyph's height apart.
    """
    v = _at_least(resp[1], t_vertical).view(np.uint8)
    _, labels, st, _ = _components(v)
    x, y, w, h = (st[:, i] for i in range(4))
    keep = np.nonzero((h <= 4 * ARM * u) & (w <= 2 * u + 1))[0]
    keep = keep[keep > 0]
    out = np.zeros(grey.shape, bool)
    if len(keep) < TEXT_GLYPHS:
        return out
    keep = keep[np.argsort(x[keep])]
    xs, ys, hs = x[keep], y[keep], h[keep]
    # Neighbours in x order: from each stroke, the next ones until the first farther than
    # twice the taller one's height; walked one step for all strokes at once (noisy
    # images have many thousands of them).
    pairs = []
    active, step = np.arange(len(keep) - 1), 1
    while len(active):
        other = active + step
        active = active[xs[other] - xs[active] <= 2 * np.maximum(hs[active], hs[other])]
        other = active + step
        # one baseline and one cap height (l, t, 1, E, R: tissue's strokes vary)
        same = (np.abs((ys[active] + hs[active]) - (ys[other] + hs[other])) <= u) & \
            (np.abs(ys[active] - ys[other]) <= u)
        pairs.append((active[same], other[same]))
        step += 1
        active = active[active + step < len(keep)]
    a, b = (np.concatenate(v) for v in zip(*pairs)) if pairs else (np.zeros(0, int),) * 2
    graph = coo_matrix((np.ones(len(a), np.uint8), (a, b)), shape=(len(keep),) * 2)
    group_of = connected_components(graph, directed=False)[1]
    for root in np.nonzero(np.bincount(group_of) >= TEXT_GLYPHS)[0]:
        g = keep[group_of == root]
        # each stroke's own pixels, read in its box only
        pixels = [grey[y[k]:y[k] + h[k], x[k]:x[k] + w[k]][labels[y[k]:y[k] + h[k], x[k]:x[k] + w[k]] == k]
                  for k in g]
        # Text is drawn in one colour: its strokes peak at one grey level; tissue's do not.
        peaks = np.array([p.max() for p in pixels], float)
        if peaks.max() - peaks.min() > t:
            continue
        top, bottom = max(0, int(y[g].min()) - 1), int((y[g] + h[g]).max()) + 2  # descenders aside
        glyph = int(h[g].max())
        level = np.median(np.concatenate(pixels))
        ink = ((spots[top:bottom] >= t) & (grey[top:bottom] >= level - t)).astype(np.uint8)
        # ... but a line of text is not a band of bright tissue: a few glyphs beyond its strokes at most
        x0, x1 = int(x[g].min()), int((x[g] + w[g]).max())
        ink[:, :max(0, x0 - 3 * glyph)] = 0
        ink[:, x1 + 3 * glyph:] = 0
        joined = cv2.morphologyEx(ink, cv2.MORPH_CLOSE, np.ones((1, glyph + 1), np.uint8))
        _, parts = cv2.connectedComponents(joined, connectivity=8)
        seeds = np.unique(parts[:, x0:x1])
        line = np.isin(parts, seeds[seeds > 0]) & (ink > 0)
        cols = np.nonzero(line.any(axis=0))[0]
        # glyphs leave most of their box empty; a bright band of tissue fills it
        if len(cols) and line.mean() * line.shape[1] / (cols[-1] - cols[0] + 1) <= TEXT_INK:
            out[top:bottom] |= line
    return out


def _spot_response(grey: np.ndarray, size: int = 3) -> np.ndarray:
    """How far a pixel stands above its size x size opening: dots of a dotted line, strokes, grains alike."""
    return cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, np.ones((size, size), np.uint8))


def _histogram_u8(a: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Counts of each uint8 value (where `mask`): cv2.calcHist, without gathering the pixels first."""
    if a.size >= 1 << 24:  # calcHist counts in float32: exact below 2**24 only
        return np.bincount((a if mask is None else a[mask.astype(bool)]).ravel(), minlength=256)
    return cv2.calcHist([a], [0], mask, [256], [0, 256]).ravel().astype(np.int64)


def _percentile_u8(a: np.ndarray, q: float, mask: np.ndarray | None = None) -> float:
    """np.percentile (lower) of uint8 values (where `mask`), by histogram: linear time, whatever the image size."""
    counts = np.cumsum(_histogram_u8(a, mask))
    return float(np.searchsorted(counts, q / 100 * (counts[-1] - 1), side="right")) if counts[-1] else 0.0


def contrast_threshold(grey: np.ndarray) -> float:
    """Grey levels a mark must stand out by here: STROKE_CONTRAST, or more on coarse, contrasty texture.

    The tissue's own contrast is the median local standard deviation (9x9): marks are
    too few to move the median.
    """
    g = grey.astype(np.float32)
    mean = cv2.blur(g, (9, 9))
    var = cv2.blur(g * g, (9, 9))
    mean *= mean
    var -= mean
    sd = np.sqrt(np.maximum(var, 0, out=var), out=var)
    return max(float(STROKE_CONTRAST), TEXTURE * _percentile_u8(np.minimum(sd, 255, out=sd).astype(np.uint8), 50))


def stroke_thresholds(grey: np.ndarray, resp: np.ndarray, base: float | None = None) -> np.ndarray:
    """Per direction, the stroke response a mark's stroke needs: above the tissue's own strokes.

    Tissue makes strokes too, mostly horizontal (specular boundaries, laterally smeared
    speckle) and as many as a few per cent of pixels on some scanners; marks are far
    fewer, so the tissue's 99th percentile per direction (inside the field: not black)
    sets the bar. `base`: contrast_threshold(grey), if known.
    """
    base = contrast_threshold(grey) if base is None else base
    inside = cv2.compare(grey, 0, cv2.CMP_GT)
    n = cv2.countNonZero(inside)
    if n < 100:
        return np.full(4, base)
    inside = None if n == grey.size else inside  # a field crop: all inside, no mask to read
    return np.array([max(base, TISSUE_STROKES * _percentile_u8(r, TISSUE_PERCENTILE, inside)) for r in resp])


def scale(shape: tuple[int, int]) -> int:
    """Kernel scale: 1 up to ~384 px, 2 above (a screen's marks grow with it; BUSI's 256 px is 1)."""
    return int(min(MAX_SCALE, max(1, round(min(shape) / 256))))


def _drawn_strokes(grey: np.ndarray) -> np.ndarray:
    """Crosses and the strokes joined to them, dotted lines between crosses, and text lines."""
    u = scale(grey.shape)
    resp = stroke_response(grey, u)
    t = contrast_threshold(grey)
    td = stroke_thresholds(grey, resp, t)
    spots = _spot_response(grey, 2 * u + 1)
    text = _text_lines(grey, resp, spots, t, td[1], u)
    centres = _crosses(resp, td, u)
    cu8 = centres.astype(np.uint8)
    n, _, boxes, _ = _components(cu8)
    n -= 1
    if n == 0 or n > MAX_CROSSES:
        # More cross-like points than any screen has calipers: the texture makes them here
        # (fine, contrasty speckle); inpainting them would paint over the tissue.
        return text
    stroke = _at_least(resp[0], td[0])
    for r, c in zip(resp[1:], td[1:]):
        stroke |= _at_least(r, c)
    # Calipers and their digits are drawn in one colour; the lesion's bright rim they sit
    # on is tissue: keep the strokes nearby only where they are about as bright as the arms.
    arms = stroke & (cv2.dilate(cu8, np.ones((2 * ARM_REACH * u + 3,) * 2, np.uint8)) > 0)
    level = np.median(grey[arms]) if arms.any() else 0
    stroke &= _at_least(grey, level - t)
    # ... and only those touching a cross's arms, or a px or two away (a caliper's digit)
    count, parts = cv2.connectedComponents(stroke.astype(np.uint8), connectivity=8)
    touch = np.zeros(count, bool)
    touch[parts[cv2.dilate(arms.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0]] = True
    touch[0] = False
    # ... within reach of a cross: read in each cross's box plus the reach (the dilation
    # there is the whole image's, and zero beyond every box)
    r = (ARM_END + ARM) * u
    reach = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2)
    near = np.zeros(grey.shape, bool)
    for bx, by, bw, bh, _ in boxes[1:]:
        y0, y1, x0, x1 = max(0, by - r), by + bh + r, max(0, bx - r), bx + bw + r
        near[y0:y1, x0:x1] |= touch[parts[y0:y1, x0:x1]] & (cv2.dilate(cu8[y0:y1, x0:x1], reach) > 0)
    # A letter can look like a cross; measuring lines run between calipers, not letters.
    dotted = _dotted(spots, centres & ~text, t, u) & _at_least(spots, t / 2)
    return text | near | centres | dotted


def _saturated_strokes(grey: np.ndarray) -> np.ndarray:
    """Crisp near-white strokes, whatever their shape (text, isolated dots drawn at full white)."""
    out = np.zeros(grey.shape, bool)
    bx, by, bw, bh = cv2.boundingRect(cv2.compare(grey, SATURATED, cv2.CMP_GE))
    if bw == 0:
        return out
    # Only the bright pixels' box matters; 2 px more gives their 5x5 median the same
    # neighbours it has in the whole image (medianBlur replicates the border: so does the box's).
    y0, y1, x0, x1 = max(0, by - 2), by + bh + 2, max(0, bx - 2), bx + bw + 2
    box = grey[y0:y1, x0:x1]
    contrast = cv2.subtract(box, cv2.medianBlur(box, 5))
    bright = box >= SATURATED
    # Hysteresis: a stroke crossing a bright speckle grain loses contrast there, while a
    # saturated grain alone rarely reaches the strong level; keep weak stroke pixels only
    # when they touch a strong one.
    weak = (bright & (contrast >= WEAK_CONTRAST)).astype(np.uint8)
    n, labels = cv2.connectedComponents(weak, connectivity=8)
    seeded = np.zeros(n, bool)
    seeded[labels[bright & (contrast >= STRONG_CONTRAST)]] = True
    seeded[0] = False
    out[y0:y1, x0:x1] = seeded[labels]
    return out


def mark_mask(img: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask of annotation marks: crosses and their strokes, saturated strokes, coloured pixels."""
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    found = _drawn_strokes(grey) | _saturated_strokes(grey)
    if min(h, w) < SMALL:
        # A small image: a screen shrunk so far that a 1-px stroke is a grey smear; look at it enlarged
        big = _drawn_strokes(cv2.resize(grey, (2 * w, 2 * h), interpolation=cv2.INTER_CUBIC))
        found |= cv2.resize(big.astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA) > 0
    r, g, b = cv2.split(img)
    chroma = cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b)) >= CHROMA
    marks = (found | chroma).astype(np.uint8)
    # Where strokes cross (the centre of a "+") the median is bright too; closing the
    # gap and a one-pixel dilation also take the anti-aliased edges.
    marks = cv2.morphologyEx(marks, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    return cv2.dilate(marks, np.ones((3, 3), np.uint8)).astype(bool)


def suppress_marks(img: np.ndarray, field_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cleaned image, marks mask): marks inside `field_mask` inpainted (Telea); nothing else changes.

    `img` is (H, W, 3) uint8 RGB; `field_mask` a boolean (H, W) mask, None for
    the whole image.
    """
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"mark suppression needs an (H, W, 3) uint8 image, got shape {img.shape} dtype {img.dtype}")
    img = np.ascontiguousarray(img)
    marks = mark_mask(img)
    if field_mask is not None:
        field_mask = np.asarray(field_mask, dtype=bool)
        if field_mask.shape != img.shape[:2]:
            raise ValueError(f"field mask of shape {field_mask.shape} does not match the image's {img.shape[:2]}")
        marks &= field_mask
    if not marks.any():
        return img.copy(), marks
    # Inpaint only the marks' bounding box (plus the radius it reads from): marks cluster
    # around the nodule, and Telea's cost grows with the area it is given.
    ys, xs = np.nonzero(marks)
    pad = INPAINT_RADIUS + 2
    y0, y1 = max(0, ys.min() - pad), min(img.shape[0], ys.max() + 1 + pad)
    x0, x1 = max(0, xs.min() - pad), min(img.shape[1], xs.max() + 1 + pad)
    crop = marks[y0:y1, x0:x1]
    painted = cv2.inpaint(img[y0:y1, x0:x1], crop.astype(np.uint8), INPAINT_RADIUS, cv2.INPAINT_TELEA)
    cleaned = img.copy()
    # cv2.inpaint leaves unmasked pixels as they were; copying only masked ones makes the promise explicit.
    cleaned[y0:y1, x0:x1][crop] = painted[crop]
    return cleaned, marks
