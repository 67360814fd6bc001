"""create_app installs every capability from one explicit list: none found by name, none skipped."""

from __future__ import annotations

import pkgutil
from pathlib import Path

from quart_trio import QuartTrio
from support.live import make_settings

import skald.routes
from skald import app as app_module
from skald.state import AppState


def _hooks(app: QuartTrio) -> tuple[set[str], set[str]]:
    before = {f.__name__ for f in app.before_request_funcs.get(None, [])}
    after = {f.__name__ for f in app.after_request_funcs.get(None, [])}
    return before, after


def test_rate_limiter_and_admin_audit_are_installed(tmp_path: Path) -> None:
    # admin.py used to install both as a side effect: dropping it (or them) must not go unnoticed.
    app = app_module.create_app(make_settings(tmp_path, rate_limit_per_second=1.0, rate_limit_burst=2))
    state: AppState = app.extensions["skald"]
    before, after = _hooks(app)
    assert state.throttle is not None
    assert "limit_rate" in before
    assert "audit_admin_action" in after


def test_rate_zero_installs_no_limiter_but_still_the_audit(tmp_path: Path) -> None:
    app = app_module.create_app(make_settings(tmp_path, rate_limit_per_second=0.0))
    state: AppState = app.extensions["skald"]
    before, after = _hooks(app)
    assert state.throttle is None
    assert "limit_rate" not in before
    assert "audit_admin_action" in after


def test_every_route_module_is_in_the_installer_list() -> None:
    # A new skald/routes module with an install() must be listed in skald.app.INSTALLERS to be served.
    listed = {install.__module__ for install in app_module.INSTALLERS}
    route_modules = {
        f"skald.routes.{info.name}"
        for info in pkgutil.iter_modules(skald.routes.__path__)
        if hasattr(__import__(f"skald.routes.{info.name}", fromlist=["install"]), "install")
    }
    assert route_modules <= listed
    assert len(app_module.INSTALLERS) == len(set(app_module.INSTALLERS))
