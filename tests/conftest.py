import os

import pytest

# Tests must never reach for the network or a GPU, and 2 cores are shared.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory):
    """A small phantom shared by the tests that only read it."""
    from thyro import phantom

    out = tmp_path_factory.mktemp("phantom")
    manifest = phantom.generate(out, n_benign=24, n_malignant=12, size=96, seed=3,
                                multi_image_fraction=0.3)
    return manifest
