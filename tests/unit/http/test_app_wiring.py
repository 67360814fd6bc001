"""create_app installs every capability from one explicit list: none found by name, none skipped."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

from quart_trio import QuartTrio
from support.live import make_settings

import skald
from skald.http import app as app_module
from skald.http.pipeline import RequestPipeline
from skald.http.state import AppState


def _hooks(app: QuartTrio) -> tuple[set[str], set[str]]:
    before = {f.__name__ for f in app.before_request_funcs.get(None, [])}
    after = {f.__name__ for f in app.after_request_funcs.get(None, [])}
    return before, after


def test_rate_limiter_and_admin_audit_are_installed(tmp_path: Path) -> None:
    # admin.py used to install both as a side effect: dropping it (or them) must not go unnoticed.
    app = app_module.create_app(make_settings(tmp_path, rate_limit_per_second=1.0, rate_limit_burst=2))
    state: AppState = app.extensions["skald"]
    _before, after = _hooks(app)
    assert state.throttle is not None
    assert isinstance(app.asgi_app, RequestPipeline)  # every request, the relay's too, passes the limiter there
    assert "audit_admin_action" in after


def test_rate_zero_installs_no_limiter_but_still_the_audit(tmp_path: Path) -> None:
    app = app_module.create_app(make_settings(tmp_path, rate_limit_per_second=0.0))
    state: AppState = app.extensions["skald"]
    _before, after = _hooks(app)
    assert state.throttle is None
    assert "audit_admin_action" in after


def test_every_install_in_the_package_is_in_the_installer_list() -> None:
    # Any skald module with an install(app, state) (a capability's routes.py, the rate limiter, the audit) must be
    # listed in skald.http.app.INSTALLERS to be served: nothing is found by name at run time.
    listed = {install.__module__ for install in app_module.INSTALLERS}
    modules = {
        info.name
        for info in pkgutil.walk_packages(skald.__path__, "skald.")
        if not info.ispkg
        and not info.name.endswith("__main__")
        and callable(getattr(importlib.import_module(info.name), "install", None))
    }
    assert modules, "no installers found: the walk is broken"
    assert modules <= listed, sorted(modules - listed)
    assert len(app_module.INSTALLERS) == len(set(app_module.INSTALLERS))


def test_routes_never_open_documents() -> None:
    # Services own their documents (they take a db_id); a route holding an actor is how the sync route
    # once needed keep_alive_until to bridge into its stream.
    offenders = [
        install.__module__
        for install in app_module.INSTALLERS
        if "open_document(" in inspect.getsource(importlib.import_module(install.__module__))
    ]
    assert offenders == []


def test_a_cluster_node_runs_no_blob_gc(tmp_path: Path) -> None:
    # A node's service DB knows only the objects uploaded through it: its GC would delete from the
    # shared bucket objects that other nodes' documents reference. A single node keeps its GC.
    blobs = {"s3_endpoint_url": "http://127.0.0.1:9", "s3_bucket": "b"}
    single: AppState = app_module.create_app(make_settings(tmp_path / "one", **blobs)).extensions["skald"]
    assert single.blob_gc is not None
    node = make_settings(tmp_path / "node", cluster_node_id="n1", cluster_etcd_endpoints="http://127.0.0.1:9", **blobs)
    clustered: AppState = app_module.create_app(node).extensions["skald"]
    assert clustered.cluster is not None and clustered.blob_gc is None
