"""The one bearer parser (skald.auth.guard.secret_from), used by the JSON API, the relay and the rate limiter."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from skald.auth.guard import secret_from
from skald.auth.tokens import TOKEN_PREFIX

_tokens = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
_schemes = st.sampled_from(["bearer", "token"]).flatmap(
    lambda s: st.tuples(*[st.sampled_from([c, c.upper()]) for c in s]).map("".join)
)
_pad = st.text(" ", max_size=3)


@given(scheme=_schemes, token=_tokens, before=_pad, after=_pad, query=st.none() | _tokens, legacy=st.booleans())
def test_a_scheme_header_gives_its_token_and_wins_over_the_query(
    scheme: str, token: str, before: str, after: str, query: str | None, legacy: bool
) -> None:
    header = f"{before}{scheme} {after}{token}{after}"
    assert secret_from(header, query, allow_query_token=legacy) == token


@given(header=st.sampled_from(["", "   ", "Bearer", "Bearer   ", "Basic Zm9vOmJhcg==", "Digest x"]), query=_tokens)
def test_without_a_token_in_the_header_the_query_counts_only_where_allowed(header: str, query: str) -> None:
    assert secret_from(header, query, allow_query_token=True) == query
    assert secret_from(header, query, allow_query_token=False) is None
    assert secret_from(header, None, allow_query_token=True) is None
    assert secret_from(header, "", allow_query_token=True) is None  # never an empty secret


@given(rest=_tokens, query=st.none() | _tokens)
def test_a_bare_skald_token_as_the_header_counts_only_on_legacy_routes(rest: str, query: str | None) -> None:
    token = TOKEN_PREFIX + rest
    assert secret_from(token, query, allow_query_token=True) == token
    assert secret_from(token, query, allow_query_token=False) is None
