"""Local paths and object-storage URIs through one fsspec interface.

An S3-compatible endpoint (MinIO, Ceph, moto) is configured once, by
`configure`, through the standard AWS variables that botocore, s3fs and
pyarrow all read. Credentials are never taken from or written to configs:
they come from the environment or the cloud's workload identity.
"""

from __future__ import annotations

import os

import fsspec

ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")


def configure(endpoint_url: str | None = None, region: str | None = None) -> dict[str, str]:
    """Point every s3:// access in this process at `endpoint_url`; return the
    (credential-free) variables that Ray workers need to do the same."""
    if endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = endpoint_url
    if region:
        os.environ["AWS_DEFAULT_REGION"] = region
    return {k: os.environ[k] for k in ENV_KEYS if k in os.environ}


def join(base: str, *names: str) -> str:
    out = str(base).rstrip("/")
    for n in names:
        out = f"{out}/{n}"
    return out


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def write_bytes(uri: str, data: bytes) -> None:
    with fsspec.open(uri, "wb", auto_mkdir=True) as f:
        f.write(data)


def write_many(files: dict[str, bytes]) -> None:
    """Write several objects at once: s3fs sends them concurrently, where one
    `write_bytes` after another would wait a round trip per object."""
    if not files:
        return
    fs, _ = fsspec.core.url_to_fs(next(iter(files)))
    paths = {fs._strip_protocol(u): d for u, d in files.items()}
    if not is_remote(next(iter(files))):
        for parent in {os.path.dirname(p) for p in paths}:
            os.makedirs(parent, exist_ok=True)
    fs.pipe(paths)


def parquet_bytes(table) -> bytes:
    """A pyarrow table as the bytes of one Parquet file (for `write_many`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def read_bytes(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as f:
        return f.read()


def exists(uri: str) -> bool:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs.exists(path)


def absolute(uri: str) -> str:
    """Local paths become absolute (Ray workers may run in another directory)."""
    return uri if is_remote(uri) else os.path.abspath(uri)


def pyarrow_filesystem(uri: str):
    """(pyarrow FileSystem, path without scheme) for Ray's `storage_filesystem`.

    Wrapping fsspec keeps one code path (and one endpoint setting) for Ray's own
    files and thyro's."""
    import pyarrow.fs as pafs

    options = {}
    if uri.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        # Pickled into Ray's controller and workers: carry the endpoint along
        # (never credentials), since their environment may not have it.
        options["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    fs, path = fsspec.core.url_to_fs(uri, **options)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
