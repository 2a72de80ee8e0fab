"""Sharing connections out among the workers (`webapp.server.Balance`): the turn rules, with two
workers' views of one shared table in this process (test_server.py has the real workers)."""
from __future__ import annotations

import copy
import time

from webapp.server import PATIENCE, Balance


def two_workers(slots: int = 2) -> tuple[Balance, Balance]:
    """Two workers' views of one table: after the fork each worker has its own copy of the
    object, and the table is shared memory."""
    first = Balance(slots)
    second = copy.copy(first)
    first.join(101)
    second.join(202)
    return first, second


def test_a_worker_holding_more_than_one_over_the_fewest_leaves_connections_to_the_others():
    first, second = two_workers()
    assert first.turn()[0]
    first.opened()
    assert first.turn()[0]  # one over: still its turn
    first.opened()
    assert not first.turn()[0]  # two over: the other's turn
    assert second.turn()[0]
    second.opened()
    assert first.turn()[0]
    first.closed()
    first.closed()
    assert list(first.table[:4]) == [101, 0, 202, 1]


def test_a_connection_left_too_long_is_taken_one_at_a_time():
    """The others may be too busy to accept: past `PATIENCE` this worker takes one, and the next
    waits its own `PATIENCE` (it used to take the whole queue at once)."""
    first, _ = two_workers()
    for _ in range(3):
        first.opened()
    accept, spinning = first.turn()
    assert (accept, spinning) == (False, False)  # the first refusal: no sleep
    assert first.turn() == (False, True)  # straight back: it is waiting, the loop sleeps a little
    time.sleep(PATIENCE * 1.5)
    assert first.turn()[0]
    assert not first.turn()[0]


def test_a_worker_that_stopped_listening_or_died_is_not_waited_for():
    first, second = two_workers()
    for _ in range(3):
        first.opened()
    assert not first.turn()[0]
    second.retire()  # a graceful stop: it finishes its requests, takes no more
    assert first.turn()[0]
    second.closed()  # its connections closing do not bring it back
    assert second.table[second.slot + 1] == Balance.RETIRED
    first.leave(202)  # the master, once it is gone
    assert list(first.table[:4]) == [101, 3, 0, 0]
    third = copy.copy(first)
    third.join(303)  # its replacement takes the free pair
    assert list(first.table[:4]) == [101, 3, 303, 0] and not first.turn()[0]


def test_a_worker_that_finds_no_room_always_accepts():
    first = Balance(1)
    views = [copy.copy(first) for _ in range(9)]
    for pid, view in enumerate(views, start=1):
        view.join(pid)
    assert views[-1].slot is None and views[-1].turn() == (True, False)
    for _ in range(5):
        views[0].opened()
    assert not views[0].turn()[0]  # the others are counted
