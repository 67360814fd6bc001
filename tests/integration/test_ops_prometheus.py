"""ops/ checked by the tools operators use: promtool, a real Prometheus scraping a real skald.

``promtool`` and ``prometheus`` come from the Debian package ``prometheus``; the issue makes
them part of CI, so a missing binary fails these tests instead of skipping them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import httpx
import trio
import yaml
from support.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "ops" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "skald.json"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

# Metric names ops/ may use that a fresh scrape does not show yet. Empty: every capability is merged
# and exports its collectors at start, so every name must come from the live scrape.
DECLARED_BY_OTHER_CAPABILITIES: frozenset[str] = frozenset()
_METRIC_NAME = re.compile(r"\bskald_[a-z0-9_]+\b")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed (Debian package 'prometheus')"
    return path


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120, check=False)


async def _scrape(server: LiveServer) -> str:
    """Make a few requests so labelled series exist, then return the /metrics text."""
    async with server.client() as client:
        assert (await client.put("/api/v1/db/opsdoc")).status_code == 201
        assert (await client.get("/api/v1/db/opsdoc")).status_code == 200
        assert (await client.get("/api/v1/db/missing")).status_code == 404
        assert (await client.get("/healthz")).status_code == 200
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def _exported_names(exposition: str) -> tuple[set[str], set[str]]:
    """Return (every sample and TYPE name, names of histograms) in a Prometheus text exposition."""
    names: set[str] = set()
    histograms: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                histograms.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names, histograms


def _alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


# ---------------------------------------------------------------- promtool on the files


def test_promtool_check_config() -> None:
    result = _run(_tool("promtool"), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_rules() -> None:
    result = _run(_tool("promtool"), "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = _run(_tool("promtool"), "test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """The check above can fail: a rule with a PromQL error is refused."""
    broken = tmp_path / "broken.yml"
    broken.write_text(ALERTS.read_text().replace("up{job=\"skald\"} == 0", "up{job=\"skald\" == 0", 1))
    result = _run(_tool("promtool"), "check", "rules", str(broken))
    assert result.returncode != 0


def test_every_alert_is_documented() -> None:
    rules = _alert_rules()
    expected = {
        "SkaldInstanceDown", "SkaldHigh5xxRate", "SkaldMailboxSaturated", "SkaldCommitLatencyHigh",
        "SkaldSlowConsumersDropped", "SkaldRateLimitRejections", "SkaldDiskNearlyFull",
    }
    assert expected <= {r["alert"] for r in rules}
    doc = OPERATIONS_DOC.read_text()
    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', doc))
    for rule in rules:
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        url = annotations["runbook_url"]
        assert url.startswith("docs/operations.md#"), url
        assert url.split("#", 1)[1] in anchors, f"{rule['alert']}: no anchor for {url} in docs/operations.md"


# ---------------------------------------------------------------- the live /metrics


async def test_promtool_check_metrics_on_live_scrape(server: LiveServer) -> None:
    exposition = await _scrape(server)
    result = await trio.to_thread.run_sync(
        lambda: _run(_tool("promtool"), "check", "metrics", stdin=exposition)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


async def test_alerts_and_dashboard_use_exported_metric_names(server: LiveServer) -> None:
    names, histograms = _exported_names(await _scrape(server))
    # The core's own metrics all show up (labelled ones with no sample yet still have a TYPE line).
    for core in ("skald_http_requests_total", "skald_requests_rejected_total", "skald_actors_stopped_total",
                 "skald_mailbox_depth", "skald_mailbox_capacity", "skald_commit_duration_seconds",
                 "skald_data_dir_free_bytes", "skald_data_dir_size_bytes", "skald_documents"):
        assert core in names, core
    used: dict[str, set[str]] = {}
    for rule in _alert_rules():
        for name in _METRIC_NAME.findall(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    for expr in _dashboard_exprs():
        for name in _METRIC_NAME.findall(expr):
            used.setdefault(name, set()).add("dashboard")
    assert len(used) > 15

    def known(name: str) -> bool:
        if name in names or name in DECLARED_BY_OTHER_CAPABILITIES:
            return True
        return any(name.endswith(s) and name.removesuffix(s) in histograms for s in _HISTOGRAM_SUFFIXES)

    unknown = {name: sorted(where) for name, where in used.items() if not known(name)}
    assert unknown == {}, "metric names used in ops/ that skald does not export"


# ---------------------------------------------------------------- a real Prometheus


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass
class RunningPrometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            log = self.log_path.read_text()
            raise AssertionError(f"prometheus exited with {self.proc.returncode}: {log}")


@contextlib.asynccontextmanager
async def _open_prometheus(tmp_path: Path, target: str) -> AsyncIterator[RunningPrometheus]:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "skald", "metrics_path": "/metrics", "scrape_timeout": "1s",
                            "static_configs": [{"targets": [target]}]}],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = _free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        proc = _start_prometheus(config_path, tmp_path / "tsdb", port, log)
        try:
            yield RunningPrometheus(f"http://127.0.0.1:{port}", proc, log_path)
        finally:
            proc.terminate()
            await trio.to_thread.run_sync(proc.wait)


def _start_prometheus(config: Path, storage: Path, port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [_tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={storage}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )


async def _poll(
    prometheus: RunningPrometheus,
    client: httpx.AsyncClient,
    path: str,
    params: dict[str, str],
    done: Callable[[Any], object],
) -> Any:  # Prometheus' JSON ``data``
    """GET ``path`` until ``done(data)`` is truthy (Prometheus is an external process: bounded polling)."""
    while True:
        prometheus.check_alive()
        try:
            response = await client.get(path, params=params)
            if response.status_code == 200:
                data = response.json()["data"]
                if done(data):
                    return data
        except httpx.TransportError:
            pass  # still starting
        await trio.sleep(0.2)


async def test_real_prometheus_scrapes_skald(server: LiveServer, tmp_path: Path) -> None:
    await _scrape(server)  # a counter with samples exists before the first scrape
    target = server.url.removeprefix("http://")
    async with (
        _open_prometheus(tmp_path, target) as prometheus,
        httpx.AsyncClient(base_url=prometheus.url, timeout=10) as client,
    ):
        with trio.fail_after(90):
            targets = await _poll(
                prometheus, client, "/api/v1/targets", {},
                lambda d: any(t["health"] == "up" for t in d["activeTargets"]),
            )
            assert targets["activeTargets"][0]["labels"]["job"] == "skald"
            up_query = {"query": 'up{job="skald"} == 1'}
            up = await _poll(prometheus, client, "/api/v1/query", up_query, lambda d: d["result"])
            assert up["result"][0]["metric"]["instance"] == target
            assert up["result"][0]["value"][1] == "1"
            requests = await _poll(
                prometheus, client, "/api/v1/query",
                {"query": 'sum(skald_http_requests_total{job="skald", route="/api/v1/db/<db_id>"})'},
                lambda d: d["result"],
            )
            assert float(requests["result"][0]["value"][1]) >= 3
            # Every alert rule was loaded and evaluated without error against the scraped data:
            # wait for an evaluation that started after the data was queryable.
            data_seen = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)

            def evaluated_since_data(data: dict[str, Any]) -> bool:
                stamps = [r["lastEvaluation"][:19] for g in data["groups"] for r in g["rules"]]
                return bool(stamps) and all(
                    datetime.fromisoformat(t).replace(tzinfo=UTC) >= data_seen for t in stamps
                )

            groups = await _poll(prometheus, client, "/api/v1/rules", {}, evaluated_since_data)
        rules = [r for g in groups["groups"] for r in g["rules"]]
        assert len(rules) == len(_alert_rules())
        assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules if r["health"] != "ok"] == []
        # Every dashboard query parses and runs (Grafana variables replaced by what they expand to).
        for expr in _dashboard_exprs():
            query = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
            response = await client.get("/api/v1/query", params={"query": query})
            assert response.status_code == 200, (expr, response.text)
            assert response.json()["status"] == "success", expr
