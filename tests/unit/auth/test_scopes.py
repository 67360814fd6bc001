"""The one authorization decision and scope parsing."""

from __future__ import annotations

import pytest

from skald.auth.scopes import ACTIONS, Principal, Scope, ScopeError, allowed_prefixes, decide


def principal(*scopes: str, admin: bool = False) -> Principal:
    return Principal("token", "tok_x", "someone", tuple(Scope.parse(s) for s in scopes), is_admin=admin)


def test_parse_forms() -> None:
    assert Scope.parse("notes:query.read") == Scope("notes", "query.read")
    assert Scope.parse("notes:pub.publish:sensors/") == Scope("notes", "pub.publish", "sensors/")
    assert Scope.parse("team-*:*") == Scope("team-*", "*")
    assert str(Scope.parse("a:stream.read:x/y:z")) == "a:stream.read:x/y:z"
    for bad in ["notes", "notes:nope", ":query.read"]:
        with pytest.raises(ScopeError):
            Scope.parse(bad)


def test_exact_db_and_action() -> None:
    p = principal("notes:query.read")
    assert decide(p, "notes", "query.read").allowed
    assert not decide(p, "other", "query.read").allowed
    denied = decide(p, "notes", "query.write")
    assert not denied.allowed and "query.write" in denied.reason


def test_glob_patterns() -> None:
    p = principal("team-*:pub.subscribe")
    assert decide(p, "team-a", "pub.subscribe").allowed
    assert not decide(p, "teamb", "pub.subscribe").allowed
    assert decide(principal("*:*"), "anything", "admin.token").allowed


def test_implied_query_classes() -> None:
    write = principal("d:query.write")
    assert decide(write, "d", "query.read").allowed
    assert not decide(write, "d", "query.admin").allowed
    admin = principal("d:query.admin")
    assert decide(admin, "d", "query.read").allowed and decide(admin, "d", "query.write").allowed
    assert not decide(principal("d:query.read"), "d", "query.write").allowed
    # nothing else implies anything
    assert not decide(principal("d:db.admin"), "d", "query.read").allowed


def test_global_actions_need_a_global_scope() -> None:
    assert decide(principal("*:admin.token"), "*", "admin.token").allowed
    assert not decide(principal("notes:admin.token"), "*", "admin.token").allowed


def test_resource_prefixes() -> None:
    p = principal("d:pub.publish:sensors/", "d:pub.publish:alerts/")
    assert decide(p, "d", "pub.publish", "sensors/kitchen").allowed
    refused = decide(p, "d", "pub.publish", "billing/x")
    assert not refused.allowed and "alerts/" in refused.reason
    assert decide(p, "d", "pub.publish", None).allowed
    assert allowed_prefixes(p, "d", "pub.publish") == ["sensors/", "alerts/"]
    assert allowed_prefixes(principal("d:pub.publish"), "d", "pub.publish") is None
    assert allowed_prefixes(principal("e:pub.publish"), "d", "pub.publish") == []


def test_admin_principal_is_allowed_everything() -> None:
    p = principal(admin=True)
    assert all(decide(p, "x", a).allowed for a in ACTIONS)
    assert not decide(principal(), "x", "query.read").allowed
