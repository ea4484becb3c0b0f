"""S3 credentials come from each process's environment and never travel in what thyro writes or hands Ray."""

from thyro.config import config_to_yaml, load_config
from thyro.data import storage


def test_the_env_handed_to_ray_workers_carries_the_endpoint_but_no_credentials(monkeypatch):
    from thyro.distributed.common import ray_env

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-value")
    for k in storage.ENV_KEYS:  # configure() writes these: let monkeypatch restore them afterwards
        monkeypatch.setenv(k, "")
    env = {**storage.configure("http://127.0.0.1:9", "eu-west-1"), **ray_env()}
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and env["AWS_DEFAULT_REGION"] == "eu-west-1"
    text = repr(env)
    assert not any(secret in text for secret in ("AKIAEXAMPLEKEY", "s3cr3t-value", "session-token-value"))


def test_a_resolved_config_has_no_place_for_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    cfg = load_config(None, [{"storage": {"endpoint_url": "http://127.0.0.1:9"}}])
    assert "s3cr3t-value" not in config_to_yaml(cfg)
    assert set(cfg.storage.model_dump()) == {"endpoint_url", "region"}
