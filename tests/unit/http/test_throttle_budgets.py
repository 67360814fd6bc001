"""No caller spends another's budget (issue 15.7): a property over any mix of callers at one IP."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from skald.auth.guard import TokenCache
from skald.auth.scopes import Scope
from skald.auth.tokens import TokenRecord
from skald.config import Settings
from skald.errors import RateLimited
from skald.http.state import AppState
from skald.http.throttle import Throttle
from skald.metrics import Metrics

IP = "192.0.2.1"
USER = "skd_user_secret"


def _throttle(clock: list[float]) -> Throttle:
    cache = TokenCache()
    record = TokenRecord("tok_user", "", "test", (Scope("*", "query.read"),), "2026-01-01T00:00:00Z",
                         None, None, None)
    cache.put(USER, record)
    state = AppState(settings=Settings(data_dir=Path("unused"), rate_limit_per_second=2.0, rate_limit_burst=3),
                     metrics=Metrics(), supervisor=cast(Any, None), token_cache=cache)
    return Throttle(state, clock=lambda: clock[0])


def _ask(throttle: Throttle, secret: str | None, status: int) -> bool:
    try:
        throttle.check(secret, IP)
    except RateLimited:
        return False
    throttle.settle(secret, IP, status)
    return True


# (who, seconds that pass before the request): the user, an anonymous caller, a guesser of tokens
_steps = st.lists(st.tuples(st.sampled_from(["user", "anonymous", "guess"]), st.sampled_from([0.0, 0.1, 0.7])),
                  max_size=60)


@settings(max_examples=200, deadline=None)
@given(_steps)
def test_the_users_answers_are_the_same_with_or_without_others_at_its_address(
    steps: list[tuple[str, float]],
) -> None:
    crowded_clock, alone_clock = [0.0], [0.0]
    crowded, alone = _throttle(crowded_clock), _throttle(alone_clock)
    assert _ask(crowded, USER, 200) and _ask(alone, USER, 200)  # the user authenticates once first
    with_others, by_itself = [], []
    guesses = 0
    for who, elapsed in steps:
        crowded_clock[0] += elapsed
        alone_clock[0] += elapsed
        if who == "user":
            with_others.append(_ask(crowded, USER, 200))
            by_itself.append(_ask(alone, USER, 200))
        elif who == "anonymous":
            _ask(crowded, None, 401)
        else:
            guesses += 1
            _ask(crowded, f"skd_guess_{guesses}", 401)
    assert with_others == by_itself


def test_guesses_spend_a_budget_of_their_own() -> None:
    clock = [0.0]
    throttle = _throttle(clock)
    assert [_ask(throttle, None, 401) for _ in range(4)] == [True, True, True, False]
    assert [_ask(throttle, f"skd_guess_{i}", 401) for i in range(4)] == [True, True, True, False]
    clock[0] += 0.5  # one failure refilled
    assert [_ask(throttle, f"skd_again_{i}", 401) for i in range(2)] == [True, False]
