from adapter.bayeux.channels import Channel
from adapter.bayeux.message import Delivery
from adapter.bayeux.session import Session

CHANNEL = Channel.parse("/bayeux/app/n")


def delivery(n: int) -> Delivery:
    return Delivery(CHANNEL, {"n": n}, str(n))


def numbers(deliveries):
    return [d.data["n"] for d in deliveries]


def test_full_queue_drops_the_oldest_and_says_how_many():
    session = Session("c", "app", ack=False, queue_size=3)
    assert [session.enqueue(delivery(n)) for n in range(5)] == [0, 0, 0, 1, 1]
    assert numbers(session.undelivered()) == [2, 3, 4]


def test_without_ack_a_batch_is_sent_once():
    session = Session("c", "app", ack=False, queue_size=10)
    session.enqueue(delivery(1))
    assert numbers(session.take_batch()[1]) == [1]
    assert session.take_batch()[1] == []


def test_with_ack_unacknowledged_messages_are_sent_again():
    session = Session("c", "app", ack=True, queue_size=10)
    session.enqueue(delivery(1))
    first, sent = session.take_batch()
    assert numbers(sent) == [1]
    # The reply carrying batch `first` was lost: the client acks the one before.
    session.acknowledge(first - 1)
    session.enqueue(delivery(2))
    second, sent = session.take_batch()
    assert (second, numbers(sent)) == (first + 1, [1, 2])
    session.acknowledge(second)
    assert session.take_batch()[1] == []


def test_drop_sent_keeps_what_was_never_sent():
    session = Session("c", "app", ack=True, queue_size=10)
    session.enqueue(delivery(1))
    session.take_batch()
    session.enqueue(delivery(2))
    session.drop_sent()
    assert numbers(session.undelivered()) == [2]
