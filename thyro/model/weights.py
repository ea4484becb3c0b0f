"""Pretrained weights: torchvision's ImageNet files, fetched once and verified.

`model.weights: imagenet` means torchvision's file for the model (its URL is
the WeightsEnum's; the file name carries a sha256 prefix). It is read from the
torch hub cache (TORCH_HOME) or, where downloads are allowed, downloaded there
through torch.hub with the hash checked. Downloads are off with
`model.offline: true` or THYRO_OFFLINE=1; then a missing file is an error that
says which file to put where.

A Ray job resolves "imagenet" on its driver before Ray starts
(`resolve_weights`): a missing file fails at once rather than in a worker, and
the workers read the driver's copy from `<out>/weights/` (local or s3://)
instead of each downloading it. That folder form, a URI ending in "/" that
holds torchvision's files under their own names, is also what an offline
cluster can point `model.weights` at.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.request
from typing import Iterable
from urllib.parse import urlparse

import torch

from thyro.data import storage

OFFLINE_ENV = "THYRO_OFFLINE"
PROBE_TIMEOUT_S = 30.0


class WeightsError(ValueError):
    """Weights could not be found, fetched, verified or fitted to the model."""


def imagenet_url(name: str) -> str:
    from thyro.model.models import SPECS

    if name not in SPECS:
        raise WeightsError(f"no ImageNet weights known for model {name!r}; known: {sorted(SPECS)}")
    return SPECS[name].imagenet.url


def file_name(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def cache_dir() -> str:
    """Where torch.hub keeps downloaded checkpoints (follows TORCH_HOME)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def offline_reason(offline: bool = False) -> str | None:
    """Why downloads are off here, or None where they are allowed."""
    if offline:
        return "model.offline is true"
    value = os.environ.get(OFFLINE_ENV, "").strip()
    if value.lower() in {"1", "true", "yes", "on"}:
        return f"{OFFLINE_ENV}={value}"
    return None


def is_folder(weights: str) -> bool:
    return weights.endswith("/") or (not storage.is_remote(weights) and os.path.isdir(weights))


def _hash_prefix(name: str) -> str:
    m = torch.hub.HASH_REGEX.search(name)
    if not m or not m.group(1):
        raise WeightsError(f"{name}: the file name carries no sha256 prefix (like resnet18-f37072fd.pth), "
                           "so it cannot be verified")
    return m.group(1)


def check_hash(data: bytes, name: str, source: str) -> None:
    """The sha256 of `data` starts with the prefix in torchvision's file name `name`."""
    want = _hash_prefix(name)
    got = hashlib.sha256(data).hexdigest()
    if not got.startswith(want):
        raise WeightsError(f"{source}: sha256 {got[:len(want)]}... does not match the prefix {want} "
                           f"in its name: the file is damaged or not {name}")


def _missing(name: str, url: str, why: str) -> WeightsError:
    fname = file_name(url)
    return WeightsError(
        f"ImageNet weights for {name} (model.weights: imagenet) are not in the local torch cache and {why}. "
        f"Put {fname} ({url}) in {cache_dir()}/ on the machine that runs the job's driver, "
        "or set model.weights to a local path or s3:// URI of a state_dict, "
        f"or of a folder ending in / that holds torchvision's files (e.g. s3://bucket/weights/ with {fname} in it).")


def download(url: str, dest_dir: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> str:
    """Fetch `url` into `dest_dir` (torch hub's cache) unless it is there; return the path.

    torch.hub checks the sha256 prefix the file name carries and moves the file
    into place only when it matches, so a bad download leaves nothing behind.
    A short HEAD request first: behind a firewall that drops packets, torch's
    own request (no timeout) would hang instead of failing.
    """
    name = file_name(url)
    prefix = _hash_prefix(name)
    dest_dir = dest_dir or cache_dir()
    path = os.path.join(dest_dir, name)
    if os.path.isfile(path):
        return path
    os.makedirs(dest_dir, exist_ok=True)
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        torch.hub.download_url_to_file(url, path, hash_prefix=prefix, progress=False)
    except RuntimeError as e:
        if "invalid hash" in str(e):
            raise WeightsError(f"{url}: downloaded file failed its hash check ({e}); nothing was cached") from None
        raise
    except OSError as e:
        raise ConnectionError(f"could not download {url} ({type(e).__name__}: {e})") from None
    return path


def imagenet_path(name: str, offline: bool = False) -> str:
    """Local path of `name`'s ImageNet file: from the cache, else downloaded if allowed."""
    url = imagenet_url(name)
    path = os.path.join(cache_dir(), file_name(url))
    if os.path.isfile(path):
        return path
    why = offline_reason(offline)
    if why:
        raise _missing(name, url, f"downloads are off here ({why})")
    try:
        return download(url)
    except ConnectionError as e:
        raise _missing(name, url, str(e)) from None


def load_state_dict(data: bytes, source: str) -> dict:
    try:
        sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{source}: not a loadable state_dict ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict):
        raise WeightsError(f"{source}: expected a state_dict (dict of tensors), got {type(sd).__name__}")
    return sd


def _read(uri: str) -> bytes:
    try:
        return storage.read_bytes(uri)
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {uri}") from None


def read_state_dict(uri: str) -> dict:
    return load_state_dict(_read(uri), uri)


def read_verified(uri: str) -> bytes:
    """A torchvision-named file's bytes, checked against the hash in its name."""
    data = _read(uri)
    check_hash(data, file_name(uri), uri)
    return data


def imagenet_state_dict(name: str, offline: bool = False) -> dict:
    path = imagenet_path(name, offline)
    return load_state_dict(read_verified(path), path)


def folder_state_dict(name: str, folder: str) -> dict:
    """`name`'s torchvision file from a folder of them (a job's <out>/weights/)."""
    uri = storage.join(folder, file_name(imagenet_url(name)))
    return load_state_dict(read_verified(uri), uri)


BACKBONE_FILE = "backbone.pt"   # thyro.model.pretraining's output: the trunk, and its card beside it
CARD_FILE = "metadata.json"


def pretrained_file(weights: str | None) -> str | None:
    """The `backbone.pt` of a self-supervised pretraining output that `weights` names (the
    folder, or the file itself), or None when `weights` is something else."""
    if not weights or weights == "imagenet":
        return None
    if weights.rstrip("/").rsplit("/", 1)[-1] == BACKBONE_FILE:
        return weights
    looks_like_folder = is_folder(weights) or (storage.is_remote(weights) and not weights.endswith((".pt", ".pth")))
    if looks_like_folder:
        candidate = storage.join(weights, BACKBONE_FILE)
        if storage.exists(candidate):
            return candidate
    return None


def pretrained_card(weights: str | None) -> dict | None:
    """The model card beside a pretrained backbone, or None (not one, or written without a card)."""
    path = pretrained_file(weights)
    if path is None:
        return None
    card_uri = path.rsplit("/", 1)[0] + "/" + CARD_FILE if "/" in path else CARD_FILE
    if not storage.exists(card_uri):
        return None
    try:
        return json.loads(storage.read_bytes(card_uri))
    except ValueError as e:
        raise WeightsError(f"{card_uri}: not a readable model card ({e})") from None


def pretrained_summary(weights: str | None) -> dict | None:
    """What a fine-tuned model's card records about the pretrained backbone it started from."""
    card = pretrained_card(weights)
    if card is None:
        return None
    t = card.get("training", {})
    return {"weights": weights, "method": card.get("method"), "backbone": card.get("backbone"),
            "created": card.get("created"), "epochs": t.get("epochs"), "steps": t.get("steps"),
            "final_loss": t.get("final_loss"), "distinct_images": card.get("data", {}).get("distinct_images"),
            "image_size": card.get("inputs", {}).get("image_size"), "git_sha": card.get("git_sha")}


def pretrained_state_dict(name: str, path: str) -> dict:
    """A pretraining output's trunk, refused when its card says it is another architecture."""
    card = pretrained_card(path)
    if card is not None and card.get("backbone") not in (None, name):
        raise WeightsError(f"{path}: a {card.get('method', 'pretrained')} backbone for {card['backbone']!r}, "
                           f"but model.name is {name!r}; pretrain a {name} backbone or set model.name: "
                           f"{card['backbone']}")
    return read_state_dict(path)


def state_dict(name: str, weights: str, offline: bool = False) -> dict:
    """The state_dict `model.weights` names for model `name`."""
    if weights == "imagenet":
        return imagenet_state_dict(name, offline)
    pretrained = pretrained_file(weights)
    if pretrained is not None:
        return pretrained_state_dict(name, pretrained)
    if is_folder(weights):
        return folder_state_dict(name, weights)
    return read_state_dict(weights)


def is_imagenet(weights: str | None) -> bool:
    """Whether `weights` gives torchvision's ImageNet files (whose Inception expects transform_input)."""
    return bool(weights) and (weights == "imagenet" or (is_folder(weights) and pretrained_file(weights) is None))


def imagenet_folder(out: str) -> str:
    """Where a job's driver copies torchvision's files for output folder `out`."""
    return storage.join(storage.absolute(out), "weights") + "/"


def resolve_weights(cfg, out: str, models: Iterable[str] | None = None):
    """On a job's driver, before Ray: make "imagenet" a folder the workers read.

    Every model the job may build (`models`; default the config's model and
    its experiment's models) gets its verified file from the cache or one
    download, copied once to `<out>/weights/`; cfg.model.weights is set to
    that folder (in place, so the caller's config is the one its trials get).
    Other values of model.weights are left as they are.
    """
    if cfg.model.weights != "imagenet":
        return cfg
    storage.configure(cfg.storage.endpoint_url, cfg.storage.region)  # runs before init_ray does it
    names = list(dict.fromkeys(models if models is not None else [cfg.model.name, *cfg.experiment.models]))
    paths = {n: imagenet_path(n, cfg.model.offline) for n in names}  # before any copy: a missing file fails first
    folder = imagenet_folder(out)
    for name, path in paths.items():
        dest = storage.join(folder, os.path.basename(path))
        data = read_verified(path)
        # same name, same hash prefix: a resumed job's copy is reused (its readers verify it)
        if not storage.exists(dest):
            storage.write_bytes(dest, data)
    cfg.model.weights = folder
    return cfg
