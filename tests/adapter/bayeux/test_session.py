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


def test_a_full_queue_drops_sent_messages_first_and_acknowledges_only_what_is_left_of_them():
    session = Session("c", "app", ack=True, queue_size=3)
    for n in (1, 2):
        session.enqueue(delivery(n))
    batch, sent = session.take_batch()
    assert numbers(sent) == [1, 2]
    # 3 fits; 4 and 5 push out 1 and 2, the sent ones.
    assert [session.enqueue(delivery(n)) for n in (3, 4, 5)] == [0, 1, 1]
    assert numbers(session.acknowledge(batch)) == []
    assert numbers(session.undelivered()) == [3, 4, 5]
    batch, sent = session.take_batch()
    assert numbers(sent) == [3, 4, 5]


def test_an_acknowledgement_removes_exactly_what_the_latest_batch_carried():
    session = Session("c", "app", ack=True, queue_size=10)
    session.enqueue(delivery(1))
    session.enqueue(delivery(2))
    batch, _ = session.take_batch()
    session.enqueue(delivery(3))  # arrived after the reply went out
    assert numbers(session.acknowledge(batch)) == [1, 2]
    assert numbers(session.acknowledge(batch)) == []  # the same ack again
    assert numbers(session.undelivered()) == [3]
    assert numbers(session.take_batch()[1]) == [3]


def test_drop_sent_after_an_overflow_keeps_the_unsent():
    session = Session("c", "app", ack=True, queue_size=2)
    session.enqueue(delivery(1))
    session.enqueue(delivery(2))
    session.take_batch()
    session.enqueue(delivery(3))  # pushes out 1, sent
    assert numbers(session.drop_sent()) == [2]
    assert numbers(session.undelivered()) == [3]
