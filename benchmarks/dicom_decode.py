"""DICOM decode throughput: one cine, uncompressed vs compressed, through thyro.data.decode.

    python benchmarks/dicom_decode.py [--frames 60] [--size 480 640] [--repeat 3]

Builds one synthetic 8-bit grey ultrasound cine (speckle over smooth anatomy),
stores it uncompressed (Explicit VR Little Endian), then transcodes the same
frames with GDCM (JPEG Lossless SV1, JPEG-LS lossless) and pydicom's encoders
(RLE; JPEG 2000 lossless via pylibjpeg-openjpeg), checks every compressed
copy decodes to the same pixels, and prints frames/s of
`decode_frames(data, name, "all")` for each (best of --repeat).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

# The same DICOM writer the tests use (tests/dicom_builders.py): a benchmark runs from a checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cine(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """A sector scan: black outside the fan, speckle with a grain of a few pixels inside
    (real speckle is spatially correlated; white noise would not compress at all)."""
    from scipy.ndimage import zoom

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    r, theta = np.hypot(yy, xx - w / 2), np.arctan2(xx - w / 2, yy)
    fan = (r < h * 0.95) & (np.abs(theta) < 0.6)
    frames = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        cy, cx = h * 0.5 + 20 * np.sin(i / 9), w * 0.5 + 30 * np.cos(i / 13)
        nodule = np.exp(-(((yy - cy) / (h * 0.15)) ** 2 + ((xx - cx) / (w * 0.12)) ** 2))
        tissue = 110 + 40 * np.sin(yy / 37.0) - 70 * nodule
        speckle = zoom(rng.rayleigh(0.35, (h // 4, w // 4)), 4, order=1)[:h, :w]
        frames[i] = np.where(fan, np.clip(tissue * speckle * 2.2, 0, 255), 0).astype(np.uint8)
    return frames


def _gdcm_transcode(raw: bytes, syntax_uid: str) -> bytes:
    import gdcm

    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "in.dcm"), os.path.join(d, "out.dcm")
        with open(src, "wb") as f:
            f.write(raw)
        reader = gdcm.ImageReader()
        reader.SetFileName(src)
        if not reader.Read():
            raise RuntimeError("gdcm could not read the uncompressed cine")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(syntax_uid)))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError(f"gdcm could not encode {syntax_uid}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(dst)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError("gdcm could not write")
        with open(dst, "rb") as f:
            return f.read()


def main() -> None:
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1, RLELossless

    from tests.dicom_builders import to_bytes, ultrasound
    from thyro.data.decode import decode_frames

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    frames = _cine(args.frames, *args.size)
    ds = ultrasound(frames)
    raw = to_bytes(ds)
    variants = {"uncompressed (Explicit VR LE)": raw}
    encoders = [("JPEG Lossless SV1 (gdcm)", lambda: _gdcm_transcode(raw, str(JPEGLosslessSV1))),
                ("JPEG-LS lossless (gdcm)", lambda: _gdcm_transcode(raw, str(JPEGLSLossless))),
                ("RLE lossless (pydicom)", lambda: to_bytes(ds, compress_to=RLELossless)),
                ("JPEG 2000 lossless (openjpeg)", lambda: to_bytes(ds, compress_to=JPEG2000Lossless))]
    for label, encode in encoders:
        try:
            variants[label] = encode()
        except Exception as e:  # an encoder missing here is reported, not fatal
            print(f"{label}: not measured ({type(e).__name__}: {e})")

    print(f"cine: {args.frames} frames of {args.size[0]}x{args.size[1]} 8-bit grey")
    print(f"{'variant':32s} {'MB':>7s} {'ratio':>6s} {'frames/s':>9s} {'ms/frame':>9s}")
    for label, data in variants.items():
        out = decode_frames(data, "bench.dcm", "all")
        assert len(out) == args.frames and all(np.array_equal(img[..., 0], frames[i]) for i, img in out), label
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            decode_frames(data, "bench.dcm", "all")
            best = min(best, time.perf_counter() - t0)
        fps = args.frames / best
        print(f"{label:32s} {len(data) / 1e6:7.2f} {len(raw) / len(data):6.2f} {fps:9.1f} {1000 / fps:9.2f}")


if __name__ == "__main__":
    main()
