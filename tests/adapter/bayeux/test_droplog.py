"""Spacing the warnings about dropped messages, on the caller's clock."""

from adapter.bayeux.droplog import DropLog, DropReport


def test_each_place_counts_on_its_own_interval_and_flush_tells_the_rest():
    drops = DropLog(10)
    assert drops.get_timer() is None
    assert drops.dropped("a", "backlog", 1, now=0) == DropReport("a", "backlog", 1, None)
    assert drops.dropped("a", "backlog", 4, now=1) is None
    assert drops.dropped("b", "session 1234abcd…", 2, now=5) == DropReport(
        "b", "session 1234abcd…", 2, None
    )
    assert drops.dropped("b", "session 1234abcd…", 3, now=6) is None
    assert drops.get_timer() == 10
    assert drops.handle_timer(9.9) == []
    assert drops.handle_timer(12) == [DropReport("a", "backlog", 4, 10)]
    assert drops.get_timer() == 15  # b's interval; a counts on until 22
    # b's interval ended late (at 22): the next one runs from then; a had none.
    assert drops.handle_timer(22) == [DropReport("b", "session 1234abcd…", 3, 10)]
    assert drops.get_timer() == 32
    assert drops.dropped("a", "backlog", 1, now=23) == DropReport("a", "backlog", 1, None)
    assert drops.dropped("a", "backlog", 2, now=24) is None
    assert drops.dropped("b", "session 1234abcd…", 7, now=24) is None
    assert drops.flush() == [
        DropReport("b", "session 1234abcd…", 7, None),
        DropReport("a", "backlog", 2, None),
    ]
    assert drops.get_timer() is None
    assert drops.handle_timer(100) == []
