"""docker-compose.yml is valid (`docker compose config`; there is no Docker engine here)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.backend_independent  # reads docker-compose.yml; no Django, database or Redis


def test_compose_services_and_healthchecks():
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = spec["services"]
    assert {"postgres", "redis", "web", "worker", "beat", "endpoint"} <= set(services)
    for name in ("postgres", "redis", "web", "worker", "endpoint"):
        assert "healthcheck" in services[name], name


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")  # Debian's package (compose v1), same `config` check
    return [legacy] if legacy else None


def test_docker_compose_config_validates():
    compose = _compose_command()
    if compose is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)")
    cmd = [*compose, "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"]
    env = {**os.environ, "SECRET_KEY": "x" * 60, "TUTOR_ENDPOINT_ADMIN_TOKEN": "t" * 32}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # a missing secret is refused with a message naming it
    env.pop("SECRET_KEY")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "SECRET_KEY" in proc.stderr
