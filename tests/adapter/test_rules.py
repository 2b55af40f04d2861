"""RulesCache: one read per presentity, reads after a mark, the age limit, the sweep."""

from __future__ import annotations

from adapter.rules import DECISIONS_TTL, RulesCache, decisions_ttl
from pidf import AttributeType, PresRules

ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.com"
A = AttributeType.ACTIVITY
NOW = 1_700_000_000.0
NEVER = float("-inf")


def test_one_read_at_a_time_serves_every_need_it_meets() -> None:
    cache = RulesCache()
    mark = cache.mark()
    read = cache.request(ALICE, mark, NEVER, NOW)
    assert read is not None and read.started == NOW
    assert cache.request(ALICE, mark, NEVER, NOW + 1) is None  # the one under way serves
    assert cache.request(ALICE, None, NOW - 5, NOW + 1) is None
    assert cache.cached(ALICE, mark, NEVER) is None  # nothing read yet
    rules = PresRules().allow(BOB, {A: True})
    cache.read_done(read, rules, NOW + 2)
    assert cache.cached(ALICE, mark, NEVER) == (read, rules)


def test_a_need_after_a_mark_is_not_met_by_a_read_begun_before_it() -> None:
    cache = RulesCache()
    asked = cache.request(ALICE, cache.mark(), NEVER, NOW)
    assert asked is not None
    before = cache.begin(asked, NOW)
    mark = cache.mark()  # an activation
    # One read under way at a time: the need asks again once it ends.
    assert cache.request(ALICE, mark, NEVER, NOW) is None
    cache.read_done(before, PresRules(), NOW)
    assert cache.cached(ALICE, mark, NEVER) is None
    after = cache.request(ALICE, mark, NEVER, NOW)
    assert after is not None and after.serial > before.serial
    cache.read_done(after, PresRules(), NOW)
    assert cache.cached(ALICE, mark, NEVER) is not None


def test_a_queued_read_serves_every_need_that_arose_before_it_began() -> None:
    cache = RulesCache()
    asked = cache.request(ALICE, cache.mark(), NEVER, NOW)
    assert asked is not None
    # While it waits its turn: activations, a change made here, aged needs.
    activation = cache.mark()
    assert cache.request(ALICE, activation, NEVER, NOW + 20) is None
    change = cache.changed(ALICE, NOW + 30)
    assert cache.request(ALICE, change, NEVER, NOW + 30) is None
    assert cache.request(ALICE, None, NOW + 40 - decisions_ttl(ALICE), NOW + 40) is None
    read = cache.begin(asked, NOW + 50)
    assert read.serial > change > activation and read.started == NOW + 50
    rules = PresRules().allow(BOB, {A: True})
    cache.read_done(read, rules, NOW + 51)
    assert cache.cached(ALICE, change, NEVER) == (read, rules)
    assert cache.cached(ALICE, None, NOW + 51 - decisions_ttl(ALICE)) == (read, rules)


def test_a_queued_read_that_ends_unbegun_serves_only_the_needs_before_it() -> None:
    # A read handed back without being begun (it never took its turn) keeps
    # the number it was asked with.
    cache = RulesCache()
    asked = cache.request(ALICE, cache.mark(), NEVER, NOW)
    assert asked is not None
    mark = cache.mark()
    cache.read_failed(asked)
    again = cache.request(ALICE, mark, NEVER, NOW)
    assert again is not None and again.serial > mark


def test_a_change_made_here_hides_older_reads_landing_later() -> None:
    cache = RulesCache()
    asked = cache.request(ALICE, cache.mark(), NEVER, NOW)
    assert asked is not None
    read = cache.begin(asked, NOW)
    mark = cache.changed(ALICE, NOW)
    cache.read_done(read, PresRules().allow(BOB, {A: True}), NOW + 1)
    # Neither for a need after the change nor for one within the age limit.
    assert cache.cached(ALICE, mark, NEVER) is None
    assert cache.cached(ALICE, None, NOW - DECISIONS_TTL) is None
    again = cache.request(ALICE, mark, NEVER, NOW + 1)  # the one under way was dropped
    assert again is not None and again.serial > mark


def test_aged_needs_take_any_read_within_the_age_limit() -> None:
    cache = RulesCache()
    read = cache.request(ALICE, cache.mark(), NEVER, NOW)
    assert read is not None
    cache.read_done(read, PresRules(), NOW)
    assert cache.cached(ALICE, None, NOW + 10 - decisions_ttl(ALICE)) is not None
    later = NOW + decisions_ttl(ALICE) + 1
    assert cache.cached(ALICE, None, later - decisions_ttl(ALICE)) is None


def test_a_failed_read_lets_the_next_need_read_again() -> None:
    cache = RulesCache()
    read = cache.request(ALICE, cache.mark(), NEVER, NOW)
    assert read is not None
    cache.read_failed(read)
    assert cache.cached(ALICE, None, NEVER) is None
    assert cache.request(ALICE, None, NEVER, NOW) is not None


def test_old_entries_are_swept_when_a_later_read_ends() -> None:
    cache = RulesCache()
    for i in range(100):
        read = cache.request(f"sip:p{i}@example.com", None, NEVER, NOW)
        assert read is not None
        cache.read_done(read, PresRules(), NOW)
    assert len(cache) == 100
    late = NOW + DECISIONS_TTL + 1
    read = cache.request(ALICE, None, NEVER, late)
    assert read is not None
    cache.read_done(read, PresRules(), late)
    assert len(cache) == 1  # only the one no older than the TTL


def test_old_entries_are_swept_once_a_ttl_has_passed_without_reads() -> None:
    # A held subscription's rules are read once; with no read after them,
    # the documents (naming every watcher) must not stay for good.
    cache = RulesCache()
    for i in range(10):
        read = cache.request(f"sip:p{i}@example.com", None, NEVER, NOW)
        assert read is not None
        cache.read_done(read, PresRules(), NOW)
    cache.expire(NOW + DECISIONS_TTL - 1)
    assert len(cache) == 10  # all still within the age limit
    cache.expire(NOW + DECISIONS_TTL + 1)
    assert len(cache) == 0
