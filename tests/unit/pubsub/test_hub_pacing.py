"""A publish is answered after its commit, not after its fan-out (issue 17).

The hub hands committed messages to subscribers' buffers from its own task, a slice of
subscribers per scheduler round, so the publisher's reply does not wait for (or compete
with) thousands of subscriber wake-ups. These tests drive a real actor and a serving
PubSub in-process; time never enters them (scheduler rounds, ``wait_all_tasks_blocked``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

from skald.config import Settings
from skald.db.supervisor import Supervisor
from skald.metrics import Metrics
from skald.pubsub.service import Hub, Message, Publish, PubSub, Subscriber
from skald.pubsub.topics import TopicFilter

DB = "fanout"


@pytest.fixture
async def pubsub(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[PubSub]:
    sup = Supervisor(Settings(data_dir=tmp_path / "data"))
    await nursery.start(sup.serve)
    service = PubSub(sup, Metrics(), 1000, fanout_interval=0)  # coalescing: its own test below
    await nursery.start(service.serve, None)
    yield service
    await sup.aclose()


def _buffered(sub: Subscriber) -> list[Message]:
    return sub.take_nowait()


async def test_a_publish_is_answered_before_every_subscriber_was_written_to(pubsub: PubSub) -> None:
    count = 20 * pubsub.fanout_slice
    async with pubsub.supervisor.open_document(DB, create=True) as actor:
        hub = pubsub.hub(actor)
        subs = [Subscriber([], None, 10) for _ in range(count)]
        for sub in subs:
            hub.add(sub)
        result = await pubsub.publish(DB, "news", "text", b"hello", None, None)
        reached = sum(1 for sub in subs if sub.buffered)
        # today's hub offered the message to all of them before the actor answered the publisher
        assert reached < count
        await trio.testing.wait_all_tasks_blocked()
        assert all([m.id for m in _buffered(sub)] == [result.message.id] for sub in subs)


async def test_every_subscriber_gets_every_message_in_order_across_passes(pubsub: PubSub) -> None:
    pubsub.fanout_slice = 3  # many passes and slices for a handful of subscribers
    async with pubsub.supervisor.open_document(DB, create=True) as actor:
        hub = pubsub.hub(actor)
        early = [Subscriber([], None, 1000) for _ in range(8)]
        filtered = Subscriber([TopicFilter.parse("odd/#")], None, 1000)
        for sub in [*early, filtered]:
            hub.add(sub)
        late: list[Subscriber] = []
        ids: list[int] = []

        async def single(n: int) -> None:
            result = await pubsub.publish(DB, f"{'odd' if n % 2 else 'even'}/{n}", "text", b"x", None, None)
            ids.append(result.message.id)

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(single, n)
            batch = [Publish("even/batch", "text", b"y", None, None) for _ in range(30)]
            nursery.start_soon(lambda: _batch(pubsub, batch, ids))
            await trio.testing.wait_all_tasks_blocked(cushion=0)  # mid-way: a subscriber joins
            late.append(Subscriber([], None, 1000))
            hub.add(late[0])
        await trio.testing.wait_all_tasks_blocked()
        everything = sorted(ids)
        assert len(everything) == 50
        for sub in early:
            assert [m.id for m in _buffered(sub)] == everything
        odd = [m.id for m in _buffered(filtered)]
        assert odd == sorted(odd) and len(odd) == 10
        joined = [m.id for m in _buffered(late[0])]
        assert joined == sorted(joined) and joined == everything[len(everything) - len(joined):]


async def _batch(pubsub: PubSub, items: list[Publish], ids: list[int]) -> None:
    ids.extend(m.id for m in await pubsub.publish_many(DB, items))


async def test_a_full_subscriber_is_dropped_and_the_others_still_get_everything(pubsub: PubSub) -> None:
    pubsub.fanout_slice = 2
    async with pubsub.supervisor.open_document(DB, create=True) as actor:
        hub = pubsub.hub(actor)
        stuck = Subscriber([], None, 3)  # never read: overflows on the fourth message
        readers = [Subscriber([], None, 1000) for _ in range(5)]
        for sub in [stuck, *readers]:
            hub.add(sub)
        published = await pubsub.publish_many(DB, [Publish("t", "text", b"z", None, None)] * 10)
        await trio.testing.wait_all_tasks_blocked()
        assert stuck.overflowed and stuck.closed and stuck not in hub.subscribers
        assert stuck.first_lost_id == published[0].id
        for sub in readers:
            assert [m.id for m in _buffered(sub)] == [m.id for m in published]


async def test_messages_committed_within_one_interval_reach_a_subscriber_in_one_write(
    pubsub: PubSub, mock_clock: trio.testing.MockClock
) -> None:
    pubsub.fanout_interval = 0.025
    async with pubsub.supervisor.open_document(DB, create=True) as actor:
        hub = pubsub.hub(actor)
        subs = [Subscriber([], None, 1000) for _ in range(2 * pubsub.fanout_slice)]  # the paced path
        for sub in subs:
            hub.add(sub)
        first = await pubsub.publish(DB, "t", "text", b"1", None, None)
        await trio.testing.wait_all_tasks_blocked()
        # after a pause the first message goes out at once
        assert all([m.id for m in _buffered(sub)] == [first.message.id] for sub in subs)
        later = [(await pubsub.publish(DB, "t", "text", b"n", None, None)).message.id for _ in range(5)]
        await trio.testing.wait_all_tasks_blocked()
        assert all(not _buffered(sub) for sub in subs)  # held until the interval has passed
        mock_clock.jump(0.025)
        await trio.testing.wait_all_tasks_blocked()
        assert all([m.id for m in _buffered(sub)] == later for sub in subs)  # all five in one pass


_STEP = st.one_of(
    st.just(("deliver", 0)), st.just(("add", 0)), st.just(("round", 0)),
    st.tuples(st.just("remove"), st.integers(0, 6)),
)


@settings(max_examples=100, deadline=None)
# a pass under way while the subscribers drop to one slice: the next message must not overtake it
@example(steps=[("add", 0), ("add", 0), ("add", 0), ("deliver", 0), ("round", 0), ("remove", 0), ("remove", 1),
                ("deliver", 0)], slice_size=1)
@given(steps=st.lists(_STEP, max_size=60), slice_size=st.integers(1, 3))
def test_any_interleaving_gives_each_subscriber_an_unbroken_tail_of_the_messages(
    steps: list[tuple[str, int]], slice_size: int
) -> None:
    """Subscribers join, leave and messages arrive in any order against the paced fan-out: every
    subscriber that stays gets the committed messages as one unbroken run in id order, from at
    latest the first message committed after it joined, to the last."""

    async def scenario() -> None:
        service = PubSub(Supervisor(Settings()), Metrics(), 1000, fanout_slice=slice_size)
        hub = Hub(service)
        subs: list[tuple[Subscriber, int]] = []  # with how many messages were committed when it joined
        removed: set[int] = set()
        committed: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.serve_fanout)
            await trio.testing.wait_all_tasks_blocked()
            for action, arg in steps:
                if action == "deliver":
                    committed.append(len(committed) + 1)
                    hub.deliver(Message(committed[-1], "t", "text", b"x", None, "c"))
                elif action == "add":
                    sub = Subscriber([], None, 1000)
                    hub.add(sub)
                    subs.append((sub, len(committed)))
                elif action == "remove" and arg < len(subs) and arg not in removed:
                    hub.remove(subs[arg][0])
                    removed.add(arg)
                else:
                    await trio.lowlevel.checkpoint()  # a scheduler round: a slice of a pass
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        for index, (sub, joined_after) in enumerate(subs):
            if index in removed:
                continue
            got = [m.id for m in sub.take_nowait()]
            assert got == committed[len(committed) - len(got):]  # an unbroken tail, in order
            assert len(got) >= len(committed) - joined_after  # nothing committed after it joined is missing

    trio.run(scenario)
