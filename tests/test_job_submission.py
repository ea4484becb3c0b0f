"""`ray job submit` path: the score entry point, submitted with a working_dir runtime env."""

import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]


def test_submitted_score_job_succeeds_and_writes_parquet(ray_dashboard, tiny_run, tiny_phantom, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    images = tiny_phantom.parent / "images"
    out = tmp_path / "scores"
    client = JobSubmissionClient(ray_dashboard)
    for attempt in range(30):  # a loaded machine: the head's job agent can be a few seconds late
        try:
            job = client.submit_job(
                entrypoint=f"python -m jobs.score --config configs/smoke.yaml --model {tiny_run} "
                           f"--input {images} --output {out}",
                # The checkout travels with the job, as `ray job submit --working-dir .` sends it.
                runtime_env={"working_dir": str(REPO),
                             "excludes": [".git", ".venv", "runs", "data", "*.egg-info", ".pytest_cache"]})
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or attempt == 29:
                raise
            time.sleep(2)
    deadline = time.monotonic() + 600
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job {job} still {status}"
        time.sleep(2)
    logs = client.get_job_logs(job)
    print(f"\njob {job}: {status}\n" + "\n".join(logs.strip().splitlines()[-4:]))
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    n_images = len(pd.read_csv(tiny_phantom))
    assert f"scored {n_images} inputs" in logs
    rows = pq.read_table(out / "predictions").to_pandas()
    assert len(rows) == n_images and (rows.status == "ok").all() and rows.input_uri.is_unique
