"""What a signed-in person may mint on the token page."""

from __future__ import annotations

from skald.auth.mint_policy import personal_namespace, personal_scopes, refusal
from skald.auth.scopes import Principal, Scope, decide


def scopes(*texts: str) -> list[Scope]:
    return [Scope.parse(t) for t in texts]


def test_namespace_is_a_valid_document_id() -> None:
    assert personal_namespace("alice@example.com") == "alice-example.com"
    assert personal_namespace("Bob Smith/x") == "Bob-Smith-x"
    assert personal_namespace("@@@") == "user"


def test_people_mint_only_in_their_namespace() -> None:
    owner = "alice@example.com"
    assert refusal(owner, False, scopes("alice-example.com:query.read")) is None
    assert refusal(owner, False, scopes("alice-example.com-notes:pub.publish:x/")) is None
    assert refusal(owner, False, scopes("alice-example.com-*:query.write")) is None
    for bad in ["*:query.read", "alice-example.com*:query.read", "alice-example.comx:query.read",
                "alice-example.com-a*:query.read", "bob:query.read", "alice-example.com:admin.token",
                "alice-example.com:*"]:
        assert refusal(owner, False, scopes(bad)) is not None, bad
    # one bad scope spoils the request
    assert refusal(owner, False, scopes("alice-example.com:query.read", "bob:query.read")) is not None


def test_admins_mint_anything() -> None:
    assert refusal("root@example.com", True, scopes("*:*", "x:admin.token")) is None


def test_session_scopes_match_the_namespace() -> None:
    p = Principal("user", "user:a", "a@x.io", personal_scopes("a@x.io"))
    assert decide(p, "a-x.io", "db.admin").allowed
    assert decide(p, "a-x.io-notes", "query.write").allowed
    assert not decide(p, "b-x.io", "query.read").allowed
    assert not decide(p, "*", "admin.token").allowed
