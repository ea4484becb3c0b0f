"""The score job's output on storage: the fixed Parquet schemas of the prediction rows and the
per-file rows, the resume key of a row, listing and reading back what a run wrote, and the one
row per input file (a cine loop's frames summed up).

Plain pyarrow; `thyro.distributed.score` calls these between chunks, from the driver, which
must stay free of torch and pandas: imports are inside the functions.
"""

from __future__ import annotations

import functools
import hashlib
import uuid

from thyro.data import storage

PRED_DIR = "predictions"
FILES_DIR = "files"


@functools.cache
def output_schema():
    """The Parquet schema, fixed: a chunk of only error rows must not change a column's type."""
    import pyarrow as pa

    from thyro.model.scoring import CAM_FEATURES, CAM_PHYSICAL

    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    fields = [("row_id", s), ("file_id", s), ("input_uri", s), ("frame", i64), ("pane", i64), ("sha256", s),
              ("status", s), ("error", s), ("prob_malignant", f64), ("margin", f64), ("label", s), ("threshold", f64),
              ("model_id", s), ("cam", pa.binary()), ("cam_height", i64), ("cam_width", i64), ("cam_target", s),
              *[(f"cam_{k}", f64) for k in CAM_FEATURES], *[(k, f64) for k in CAM_PHYSICAL], ("cam_in_field", f64),
              ("field_y0", i64), ("field_x0", i64), ("field_y1", i64), ("field_x1", i64), ("field_source", s),
              ("mm_per_pixel_y", f64), ("mm_per_pixel_x", f64),
              ("overlay_uri", s), ("width", i64), ("height", i64), ("decode_ms", f64), ("infer_ms", f64)]
    return pa.schema(fields)


@functools.cache
def files_schema():
    """One row per input file and model: a cine loop's frames summed up."""
    import pyarrow as pa

    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    return pa.schema([("file_id", s), ("input_uri", s), ("sha256", s), ("model_id", s), ("threshold", f64),
                      ("n_frames", i64), ("n_rows", i64), ("n_ok", i64), ("n_error", i64), ("n_skipped", i64),
                      ("prob_malignant_max", f64), ("prob_malignant_mean", f64), ("label_any", s)])


def score_key(row_id: str, sha: str | None) -> str:
    """A row's resume key: its row id and content hash."""
    # row_id already hashes path, frame and pane (salted): the key needs no path,
    # so a run with redacted paths resumes as well.
    return hashlib.sha1(f"{row_id}|{sha}".encode()).hexdigest()


def scored_keys(output: str, model_id: str, quarantine: bool = False) -> set[str]:
    """Keys of rows already written for `model_id`.

    A file cut off by a kill is unreadable: with `quarantine` it is moved to
    `<output>/_incomplete/` (kept, not deleted) and its rows are scored again.
    """
    import pyarrow.parquet as pq

    d = storage.join(output, PRED_DIR)
    fs, _ = storage.pyarrow_filesystem(d)
    keys: set[str] = set()
    for path in sorted(parquet_files(d)):
        try:
            t = pq.read_table(path, filesystem=fs, columns=["row_id", "sha256", "model_id"])
        except Exception:
            if quarantine:
                import fsspec

                ffs, root = fsspec.core.url_to_fs(storage.join(output, "_incomplete"))
                ffs.makedirs(root, exist_ok=True)
                ffs.mv(path, f"{root}/{path.rsplit('/', 1)[-1]}")
            continue
        for r, s, m in zip(*(t.column(c).to_pylist() for c in ("row_id", "sha256", "model_id"))):
            if m == model_id:
                keys.add(score_key(r, s))
    return keys


def parquet_files(pred_dir: str) -> set[str]:
    """The Parquet files under `pred_dir` (a folder or prefix), none when it does not exist."""
    import pyarrow.fs as pafs

    if not storage.exists(pred_dir):
        return set()
    fs, path = storage.pyarrow_filesystem(pred_dir)
    return {i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if i.path.endswith(".parquet")}


def status_counts(pred_dir: str, files: set[str]) -> dict[str, int]:
    """ok / error counts of the rows in `files` (read back: what is on storage is what counts)."""
    import pyarrow.parquet as pq

    fs, _ = storage.pyarrow_filesystem(pred_dir)
    counts: dict[str, int] = {}
    for f in files:
        for v in pq.read_table(f, filesystem=fs, columns=["status"]).column("status").to_pylist():
            counts[v] = counts.get(v, 0) + 1
    return counts


_FILE_COLUMNS = ["file_id", "input_uri", "sha256", "frame", "status", "prob_malignant", "threshold", "model_id"]


def file_rows(rows):
    """Prediction rows (any subset of whole files) -> one row per (file_id, model_id): frames
    scored, the max and mean probability over its ok rows, malignant if any is at the threshold,
    and how many rows each status has. One vectorised group-by: the driver runs it between
    chunks, while the actors wait."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = rows.select(_FILE_COLUMNS)
    ok = pc.equal(t.column("status"), "ok")
    null_f64, null_i64 = pa.scalar(None, pa.float64()), pa.scalar(None, pa.int64())
    t = t.append_column("ok_prob", pc.if_else(ok, t.column("prob_malignant"), null_f64))
    t = t.append_column("ok_frame", pc.if_else(ok, t.column("frame"), null_i64))
    for status in ("ok", "error", "skipped"):
        t = t.append_column(f"is_{status}", pc.cast(pc.equal(t.column("status"), status), pa.int64()))
    g = t.group_by(["file_id", "model_id"], use_threads=False).aggregate([
        ("input_uri", "first"), ("sha256", "first"), ("threshold", "first"), ("ok_frame", "count_distinct"),
        ("status", "count", pc.CountOptions(mode="all")), ("is_ok", "sum"), ("is_error", "sum"),
        ("is_skipped", "sum"), ("ok_prob", "max"), ("ok_prob", "mean")])
    g = g.sort_by([("file_id", "ascending"), ("model_id", "ascending")])
    top, thr = g.column("ok_prob_max"), g.column("threshold_first")
    label = pc.if_else(pc.greater_equal(top, thr), "malignant", "benign")  # null where either is
    cols = {"file_id": g.column("file_id"), "input_uri": g.column("input_uri_first"),
            "sha256": g.column("sha256_first"), "model_id": g.column("model_id"), "threshold": thr,
            "n_frames": g.column("ok_frame_count_distinct"), "n_rows": g.column("status_count"),
            "n_ok": g.column("is_ok_sum"), "n_error": g.column("is_error_sum"),
            "n_skipped": g.column("is_skipped_sum"), "prob_malignant_max": top,
            "prob_malignant_mean": g.column("ok_prob_mean"), "label_any": label}
    schema = files_schema()
    return pa.table({f.name: pc.cast(cols[f.name], f.type) for f in schema}, schema=schema)


def read_rows(pred_dir: str, paths, ids: set[str] | None = None, model_id: str | None = None):
    """The per-file columns of `paths`, only rows of `ids` and `model_id` when given; files
    written before `file_id` existed, or cut off by a kill, are passed over."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    fs, _ = storage.pyarrow_filesystem(pred_dir)
    parts = []
    for path in sorted(paths):
        try:
            t = pq.read_table(path, filesystem=fs, columns=_FILE_COLUMNS)
        except Exception:
            continue
        if ids is not None:
            t = t.filter(pc.is_in(t.column("file_id"), value_set=pa.array(sorted(ids), pa.string())))
        if model_id is not None:
            t = t.filter(pc.equal(t.column("model_id"), model_id))
        parts.append(t)
    return pa.concat_tables(parts) if parts else None


def file_ids(pred_dir: str, paths, model_id: str) -> set[str]:
    """The file_ids of `model_id`'s rows in `paths`."""
    t = read_rows(pred_dir, paths, model_id=model_id)
    return set() if t is None else set(t.column("file_id").to_pylist())


def write_file_rows(output: str, rows) -> int:
    """One Parquet file of per-file rows under `<output>/files/`; how many rows."""
    if rows is None or rows.num_rows == 0:
        return 0
    t = file_rows(rows)
    storage.write_many({storage.join(output, FILES_DIR, f"part-{uuid.uuid4().hex}.parquet"): storage.parquet_bytes(t)})
    return t.num_rows


def summarised_ids(output: str, model_id: str) -> set[str]:
    """file_ids that already have a per-file row; an unreadable part (a kill) is moved aside."""
    import pyarrow.parquet as pq

    d = storage.join(output, FILES_DIR)
    fs, _ = storage.pyarrow_filesystem(d)
    have: set[str] = set()
    for path in sorted(parquet_files(d)):
        try:
            t = pq.read_table(path, filesystem=fs, columns=["file_id", "model_id"])
        except Exception:
            import fsspec

            ffs, root = fsspec.core.url_to_fs(storage.join(output, "_incomplete", FILES_DIR))
            ffs.makedirs(root, exist_ok=True)
            ffs.mv(path, f"{root}/{path.rsplit('/', 1)[-1]}")
            continue
        have |= {f for f, m in zip(*(t.column(c).to_pylist() for c in ("file_id", "model_id"))) if m == model_id}
    return have

