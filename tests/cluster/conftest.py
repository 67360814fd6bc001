"""A real cluster per test: etcd, moto's S3 API, N ``skald serve`` nodes (each with Litestream) and HAProxy.

Started by :func:`skald.cluster.local.open_local_cluster`, the code behind ``skald cluster up``. The
nodes are subprocesses so tests can SIGKILL and SIGSTOP them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cluster import ClusterFactory, cluster_factory


@pytest.fixture
def start_cluster(tmp_path: Path) -> ClusterFactory:
    return cluster_factory(tmp_path)
