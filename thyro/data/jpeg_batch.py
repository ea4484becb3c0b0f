"""JPEG files decoded where the model runs: a batch of bytes -> the model's input squares.

On a GPU node the predictor decodes JPEGs itself (`torchvision.io.decode_jpeg`, nvjpeg on
CUDA, libjpeg-turbo on CPU: one code path, the device is a parameter), fits each picture onto
the input square as the preset says and returns uint8 squares; the CPU beside it only reads
bytes and writes results, so a GPU never waits on a 2-core host. Plain torch.

Only what needs no field detection to crop takes this path (`eligible`): a JPEG, upright
(EXIF orientation 1: nvjpeg does not rotate), scored whole (`preset.field == "none"`). Everything
else is decoded and cropped on the CPU (`thyro.model.scoring.prepare`). The field that
`cam_in_field` measures against is found by the CPU tasks after the actor, on a small grey
copy the actor makes (`field_view`).
"""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F

from thyro.data.decode import MAX_PIXELS, MIN_SIDE
from thyro.image.geometry import Box, fit
from thyro.image.preset import Preset

_SOI = b"\xff\xd8\xff"


def eligible(data: bytes, preset: Preset) -> tuple[int, int] | None:
    """(H, W) when these bytes can be decoded by `decode_batch` for this preset, else None
    (the CPU path then decodes them, and reports any problem as it always does)."""
    if preset.field != "none" or not data.startswith(_SOI):
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:  # the header only: no pixel is decoded here
            if im.format != "JPEG" or im.mode not in ("L", "RGB") or im.getexif().get(0x0112, 1) != 1:
                return None
            w, h = im.size
    except Exception:
        return None
    if min(h, w) < MIN_SIDE or h * w > MAX_PIXELS:
        return None
    return h, w


def decode_batch(datas: list[bytes], device: torch.device | str) -> list[torch.Tensor | Exception]:
    """(3, H, W) uint8 tensors on `device`, one per file, in one batched call; a file that fails
    is retried alone, so one broken file costs only its own row (its exception in its place)."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    with warnings.catch_warnings():
        # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec, which is not
        # in the lock; the call works as documented. Once per batch, not once per image.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device))
        except Exception:
            out: list[torch.Tensor | Exception] = []
            for r in raw:
                try:
                    out.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=device))
                except Exception as e:  # corrupt or truncated: an error row, not a failed batch
                    out.append(e)
            return out


def to_square(img: torch.Tensor, p: Preset) -> tuple[torch.Tensor, Box]:
    """A (3, H, W) uint8 picture -> the (3, S, S) uint8 square the model sees and where the picture
    lies on it: `transforms.model_input`'s fit (squash or letterbox), antialiased bilinear
    resampling as PIL's, rounded to uint8 as the CPU path's square is."""
    S = p.image_size
    y0, x0, y1, x1 = inner = fit(img.shape[1], img.shape[2], S, p.resize)
    x = img[None].float()
    if (y1 - y0, x1 - x0) != tuple(img.shape[1:]):
        x = F.interpolate(x, size=(y1 - y0, x1 - x0), mode="bilinear", antialias=True, align_corners=False)
    out = torch.zeros((3, S, S), dtype=torch.uint8, device=img.device)
    out[:, y0:y1, x0:x1] = x[0].round().clamp(0, 255).to(torch.uint8)
    return out, inner


def field_view(img: torch.Tensor) -> torch.Tensor:
    """A (3, H, W) uint8 picture -> the grey working copy scan-field detection runs on
    (`thyro.image.field.working_shape`: long side 256, aspect kept), uint8 on the picture's device:
    cv2's RGB -> grey weights, then area averaging as cv2's INTER_AREA. A few KB to ship to the CPU
    tasks, which find the field on it (`thyro.model.predictor.field_mask_from_view`); on the model's
    squashed square the gap between the panes of a dual screen closes and they merge."""
    from thyro.image.field import working_shape

    w = torch.tensor((0.299, 0.587, 0.114), device=img.device).view(3, 1, 1)
    grey = (img.float() * w).sum(0).round()
    size = working_shape(int(img.shape[1]), int(img.shape[2]))
    if size != tuple(grey.shape):
        grey = F.interpolate(grey[None, None], size=size, mode="area")[0, 0]
    return grey.round().clamp(0, 255).to(torch.uint8)


def normalise(squares: torch.Tensor, p: Preset) -> torch.Tensor:
    """(N, 3, S, S) uint8 -> the normalised float batch (`transforms.normalize`'s arithmetic)."""
    t = squares.float().div_(255)
    mean = torch.tensor(p.mean, device=t.device).view(1, 3, 1, 1)
    std = torch.tensor(p.std, device=t.device).view(1, 3, 1, 1)
    return (t - mean) / std
