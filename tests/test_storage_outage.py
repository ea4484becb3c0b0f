"""An unreachable object store stops the score job naming the endpoint; it is no input's fault."""

import socket

import pytest

from thyro.data.sources import Item
from thyro.image.transforms import resolve_preset
from thyro.model.scoring import StorageUnavailable, prepare


def test_unreachable_endpoint_raises_naming_it_instead_of_an_error_row(monkeypatch):
    import s3fs

    # s3fs reuses a filesystem made earlier in the process (another test's live endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(StorageUnavailable, match=f"127.0.0.1:{port}"):
        prepare(Item("s3://bucket/scan.png"), resolve_preset("study", 32))
    s3fs.S3FileSystem.clear_instance_cache()
    # a missing local file is the input's own fault: an error row, as before
    assert prepare(Item("/nonexistent/scan.png"), resolve_preset("study", 32))[0]["status"] == "error"
