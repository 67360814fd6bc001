"""ops/haproxy/haproxy.cfg is what skald renders, and HAProxy accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from skald.cluster.haproxy import EXAMPLE_NODES, haproxy_config
from skald.cluster.local import find_tool

OPS = Path(__file__).resolve().parents[2] / "ops" / "haproxy" / "haproxy.cfg"


def test_ops_config_is_the_rendered_template() -> None:
    assert OPS.read_text() == haproxy_config("*:8000", EXAMPLE_NODES)


def test_haproxy_accepts_the_config(tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.cfg"
    rendered.write_text(haproxy_config("127.0.0.1:18000", [("a", "127.0.0.1:1"), ("b", "127.0.0.1:2")]))
    for path in (OPS, rendered):
        result = subprocess.run([find_tool("haproxy"), "-c", "-f", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
