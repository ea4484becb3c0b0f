"""Discover the inputs of a scoring job, lazily, from any archive layout.

An input is a local folder tree, an object-storage prefix (s3://...), a zip or
tar(.gz) archive read in place, or a CSV manifest with a `path` column. Each
discovered file becomes one `Item`; nothing is ever listed into memory all at
once beyond one directory, one CSV chunk or one archive's index, and nothing
is extracted to disk. Archive members with absolute paths or `..` are
reported as bad inputs, never opened.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import zipfile
from dataclasses import dataclass
from typing import Iterator

import fsspec

ARCHIVE_SEP = "!"  # archive.zip!member/path.png
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass
class Item:
    input_uri: str                # file URI, or archive URI + "!" + member
    data: bytes | None = None     # carried inline where re-reading is costly (tar streams)
    error: str | None = None      # a problem found during discovery


def unsafe_member(name: str) -> bool:
    n = name.replace("\\", "/")
    return n.startswith("/") or (len(n) > 1 and n[1] == ":") or ".." in n.split("/")


def _zip_items(uri: str) -> Iterator[Item]:
    with fsspec.open(uri, "rb") as f, zipfile.ZipFile(f) as z:
        for info in z.infolist():
            if info.is_dir():
                continue
            item_uri = f"{uri}{ARCHIVE_SEP}{info.filename}"
            yield Item(item_uri, error="unsafe archive member path (absolute or '..')"
                       if unsafe_member(info.filename) else None)


def _tar_items(uri: str) -> Iterator[Item]:
    # Stream mode ("r|*"): one pass, no seeking, gzip or not.
    with fsspec.open(uri, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as t:
        for m in t:
            if not m.isfile():
                continue
            item_uri = f"{uri}{ARCHIVE_SEP}{m.name}"
            if unsafe_member(m.name):
                yield Item(item_uri, error="unsafe archive member path (absolute or '..')")
                continue
            yield Item(item_uri, data=t.extractfile(m).read())


def _csv_items(uri: str, chunksize: int = 10_000) -> Iterator[Item]:
    import pandas as pd

    base = posixpath.dirname(uri)
    with fsspec.open(uri, "r") as f:
        for chunk in pd.read_csv(f, dtype=str, keep_default_na=False, chunksize=chunksize):
            if "path" not in chunk:
                raise ValueError(f"{uri}: a scoring manifest needs a 'path' column")
            for p in chunk["path"]:
                yield Item(p if "://" in p or p.startswith("/") else f"{base}/{p}")


def _tree_items(uri: str) -> Iterator[Item]:
    fs, root = fsspec.core.url_to_fs(uri)
    proto = "" if "://" not in uri else uri.split("://", 1)[0] + "://"
    for dirpath, dirs, files in fs.walk(root):
        dirs.sort()
        for name in sorted(files):
            if not name.startswith("."):
                yield Item(f"{proto}{dirpath.rstrip('/')}/{name}")


def discover(uri: str) -> Iterator[Item]:
    """Yield every input under `uri` (see module doc), in a deterministic order."""
    low = uri.lower()
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"input not found: {uri}")
    if fs.isdir(path):
        return _tree_items(uri)
    if low.endswith(".zip"):
        return _zip_items(uri)
    if low.endswith(TAR_SUFFIXES):
        return _tar_items(uri)
    if low.endswith(".csv"):
        return _csv_items(uri)
    return iter([Item(uri)])


def chunks(items: Iterator[Item], max_items: int, max_bytes: int) -> Iterator[list[Item]]:
    """Lists of at most `max_items` items and about `max_bytes` of inline data: what a job's
    driver holds of an archive at a time."""
    chunk, size = [], 0
    for item in items:
        chunk.append(item)
        size += len(item.data or b"")
        if len(chunk) >= max_items or size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def read_item(item: Item) -> bytes:
    """The bytes of an item (zip members are read from the archive in place)."""
    if item.data is not None:
        return item.data
    if ARCHIVE_SEP in item.input_uri and item.input_uri.lower().split(ARCHIVE_SEP)[0].endswith(".zip"):
        archive, member = item.input_uri.split(ARCHIVE_SEP, 1)
        with fsspec.open(archive, "rb") as f, zipfile.ZipFile(f) as z:
            return z.read(member)
    with fsspec.open(item.input_uri, "rb") as f:
        return f.read()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    """A zip archive in memory (tests and benchmarks build inputs with it)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()
