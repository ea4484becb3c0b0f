"""Ray's token authentication (RAY_AUTH_MODE=token), as cluster/ turns it on: a head
started with a token refuses job submissions without it and runs them with it.

Its own head: own ports, own temp dir, env passed to the subprocess only, so the
shared test cluster (conftest, auth disabled) is not disturbed.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def token_head():
    """(dashboard URL, token) of a local head started with RAY_AUTH_MODE=token."""
    token = secrets.token_hex(32)
    temp = tempfile.mkdtemp(prefix="rauth", dir="/tmp")  # short: Ray's socket paths have a length limit
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # no RAY_ADDRESS, no other auth
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, HOME=temp,  # HOME: no stray ~/.ray/auth_token
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    dashboard_port = _free_port()
    ports = {"port": _free_port(), "dashboard-port": dashboard_port, "ray-client-server-port": _free_port(),
             "node-manager-port": _free_port(), "object-manager-port": _free_port(),
             "dashboard-agent-grpc-port": _free_port(), "dashboard-agent-listen-port": _free_port(),
             "metrics-export-port": _free_port(), "runtime-env-agent-port": _free_port()}
    proc = subprocess.Popen([f"{bin_dir}/ray", "start", "--head", "--block", "--num-cpus=1", "--num-gpus=0",
                             "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--disable-usage-stats",
                             "--node-ip-address=127.0.0.1", f"--temp-dir={temp}/ray",
                             *(f"--{k}={v}" for k, v in ports.items())],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{dashboard_port}", token
    finally:
        proc.send_signal(signal.SIGINT)  # SIGTERM would orphan its actors
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(temp, ignore_errors=True)


def _client(url: str, token: str | None, wait_s: float = 45):
    """A JobSubmissionClient, waiting for the job server to come up; raises what it raises."""
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return JobSubmissionClient(url, headers=headers)
        except ConnectionError:  # not listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_job_server_refuses_without_the_token_and_runs_with_it(token_head):
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus

    url, token = token_head
    assert not is_token_auth_enabled()  # this process sends no token of its own
    with pytest.raises(AuthenticationError, match="Authentication required") as refused:
        _client(url, None)
    print("refused:", refused.value)
    with pytest.raises(AuthenticationError, match="Authentication failed"):
        _client(url, secrets.token_hex(32))  # a wrong token

    client = _client(url, token)
    job = client.submit_job(entrypoint='python -c "print(1)"')
    deadline = time.monotonic() + 40
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, f"job {job} still {status}"
        time.sleep(0.5)
    logs = client.get_job_logs(job)
    print("accepted:", job, status, repr(logs))
    assert status == JobStatus.SUCCEEDED and logs.strip().splitlines()[-1] == "1"
