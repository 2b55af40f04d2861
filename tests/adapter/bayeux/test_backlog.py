from adapter.bayeux.backlog import Backlog
from adapter.bayeux.channels import Channel
from adapter.bayeux.message import Delivery


def delivery(channel: str, n: int) -> Delivery:
    return Delivery(Channel.parse(channel), {"n": n}, str(n))


def test_bounded_per_application_oldest_dropped():
    backlog = Backlog(size=2, ttl=100)
    assert backlog.add("a", delivery("/bayeux/a/x", 1), now=0) == 0
    assert backlog.add("a", delivery("/bayeux/a/x", 2), now=0) == 0
    assert backlog.add("a", delivery("/bayeux/a/x", 3), now=0) == 1
    assert backlog.add("b", delivery("/bayeux/b/x", 4), now=0) == 0
    taken = backlog.take("a", [Channel.parse("/bayeux/a/**")], now=1)
    assert [d.data["n"] for d in taken] == [2, 3]
    assert backlog.count("a") == 0 and backlog.count("b") == 1


def test_take_only_what_matches():
    backlog = Backlog(size=10, ttl=100)
    backlog.add("a", delivery("/bayeux/a/x", 1), now=0)
    backlog.add("a", delivery("/bayeux/a/y", 2), now=0)
    taken = backlog.take("a", [Channel.parse("/bayeux/a/y")], now=0)
    assert [d.data["n"] for d in taken] == [2]
    assert backlog.count("a") == 1


def test_messages_expire_after_their_ttl():
    backlog = Backlog(size=10, ttl=10)
    backlog.add("a", delivery("/bayeux/a/x", 1), now=0)
    backlog.add("a", delivery("/bayeux/a/x", 2), now=5)
    assert backlog.next_expiry() == 10
    backlog.expire(now=10)
    assert backlog.next_expiry() == 15
    taken = backlog.take("a", [Channel.parse("/bayeux/a/x")], now=14)
    assert [d.data["n"] for d in taken] == [2]
    backlog.add("a", delivery("/bayeux/a/x", 3), now=20)
    assert backlog.take("a", [Channel.parse("/bayeux/a/x")], now=30) == []
    assert backlog.next_expiry() is None
