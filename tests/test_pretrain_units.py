"""The pure pieces of the Ray pretrain job (thyro/distributed/pretrain.py), without Ray."""

import hashlib
import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from thyro.config import load_config
from thyro.distributed.pretrain import (_read_args, add_distinct, checkpoint_due, hash_prefix, pretrain_preset,
                                        resume_point, scan_block, steps_per_epoch, take, views_block)


def _png(seed: int, size: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_steps_per_epoch_is_the_full_batches_of_each_worker():
    assert steps_per_epoch(100, 8, 2) == 6  # 100 // (8 x 2): every worker takes 6 full batches
    assert steps_per_epoch(16, 8, 2) == 1


def test_too_few_images_for_one_batch_per_worker_is_an_error_naming_the_counts():
    with pytest.raises(ValueError, match="16 images; the input gave 15"):
        steps_per_epoch(15, 8, 2)


@pytest.mark.parametrize("step,per_epoch,want", [(0, 3, (0, 3)), (7, 3, (2, 2)), (6, 3, (2, 3)), (3, 4, (0, 1))])
def test_resume_point_is_the_epoch_and_the_steps_left_in_it(step, per_epoch, want):
    # 7 steps at 3 an epoch: epochs 0 and 1 done (6 steps), one step of epoch 2 taken, 2 left
    assert resume_point(step, per_epoch) == want


def test_checkpoints_fall_every_n_steps_before_the_last():
    assert [s for s in range(1, 21) if checkpoint_due(s, 5, 20)] == [5, 10, 15]


def test_take_stops_after_n_and_closes_the_source():
    closed = []

    def gen():
        try:
            yield from range(10)
        finally:
            closed.append(True)

    assert list(take(gen(), 3)) == [0, 1, 2] and closed == [True]
    assert list(take(iter([1, 2]), 5)) == [1, 2]  # a short source: all of it


def test_hash_prefix_is_the_first_64_bits_of_the_digest():
    data = b"an ultrasound frame"
    assert hash_prefix(hashlib.sha256(data).hexdigest()) == int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def test_distinct_count_over_chunks_is_the_number_of_distinct_sha256():
    # copies within a chunk and across chunks, and an empty chunk, as the scan meets them
    chunks = [[_png(1), _png(2), _png(1)], [_png(2), _png(3)], []]
    seen = np.zeros(0, np.uint64)
    for chunk in chunks:
        seen = add_distinct(seen, [hashlib.sha256(d).hexdigest() for d in chunk])
    assert len(seen) == len({hashlib.sha256(d).digest() for c in chunks for d in c}) == 3


def _items(entries):
    return pa.table({"input_uri": [u for u, _ in entries], "data": pa.array([d for _, d in entries], pa.binary()),
                     "error": pa.array([None] * len(entries), pa.string())})


def test_scan_gives_the_score_jobs_statuses_and_content_hashes():
    cfg = load_config(None, [{"pretrain": {"image_size": 32}}])
    good = _png(1)
    rows = scan_block(_items([("a/good.png", good), ("a/cut.png", good[:40]), ("a/labels.csv", b"x,y\n")]),
                      pretrain_preset(cfg), _read_args(cfg)).to_pylist()
    by = {r["input_uri"]: r for r in rows}
    assert len(rows) == 3
    assert by["a/good.png"]["status"] == "ok" and by["a/good.png"]["sha256"] == hashlib.sha256(good).hexdigest()
    assert by["a/cut.png"]["status"] == "error" and by["a/cut.png"]["error"]
    assert by["a/labels.csv"]["status"] == "skipped"


def test_views_block_makes_two_different_views_of_each_counted_image():
    cfg = load_config(None, [{"pretrain": {"image_size": 32}}])
    files = pa.table({"input_uri": ["x/1.png", "x/2.png"], "data": pa.array([_png(2), _png(3)], pa.binary()),
                      "n_images": [1, 1]})
    out = views_block(files, pretrain_preset(cfg), _read_args(cfg), 32, cfg.pretrain.view_strengths())
    assert out["v1"].shape == out["v2"].shape == (2, 3, 32, 32) and out["v1"].dtype == np.float32
    assert not np.allclose(out["v1"], out["v2"])  # random windows, jitter, noise: never the same view


def test_views_block_skips_an_input_that_no_longer_reads():
    cfg = load_config(None, [{"pretrain": {"image_size": 32}}])
    files = pa.table({"input_uri": ["x/gone.png"], "data": pa.array([b"\x89PNG broken"], pa.binary()),
                      "n_images": [1]})
    out = views_block(files, pretrain_preset(cfg), _read_args(cfg), 32, cfg.pretrain.view_strengths())
    assert out["v1"].shape == (0, 3, 32, 32)


def test_discovery_chunks_are_bounded_by_items_and_inline_bytes():
    from thyro.data.sources import Item, chunks

    items = [Item(f"a.tar!{i}.png", data=b"x" * 10) for i in range(7)]
    assert [len(c) for c in chunks(iter(items), 10, 25)] == [3, 3, 1]  # 30 bytes >= 25 closes a chunk
    assert [len(c) for c in chunks(iter(items), 2, 10**6)] == [2, 2, 2, 1]
