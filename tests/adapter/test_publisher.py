"""The Publisher machine on a manual clock: inputs in, actions out, no I/O, no sleeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from adapter.publisher import (
    REPUBLISH_DELAY,
    Forget,
    Modify,
    Phase,
    Publish,
    Publisher,
    Republish,
    Save,
    SaveTag,
    Unpublish,
)
from pidf import Activity, AttributeType, Place, PresenceAttribute, decode

ALICE = "sip:alice@example.com"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def busy(when: datetime | None = None) -> PresenceAttribute:
    return PresenceAttribute(Activity.BUSY, when)


def office(when: datetime | None = None) -> PresenceAttribute:
    return PresenceAttribute(Place.OFFICE, when)


def published(machine: Publisher, *attributes: PresenceAttribute) -> bytes:
    """Publish ``attributes`` at T0 and confirm it; the body that went out."""
    actions = machine.publish(ALICE, attributes, T0)
    body = next(a.body for a in actions if isinstance(a, Publish | Modify))
    machine.confirmed(ALICE, "e1", 3600, T0)
    return body


def test_a_first_publish_saves_then_publishes_what_it_stamped_now() -> None:
    machine = Publisher()
    save, publish = machine.publish(ALICE, (busy(), office(at(-60))), T0)
    # Stamped now unless the caller said when.
    stamped = (busy(T0), office(at(-60)))
    assert save == Save(ALICE, stamped, None, None)
    assert isinstance(publish, Publish) and (publish.etag, publish.etag_left) == (None, None)
    assert decode(publish.body).attributes == stamped
    assert machine.phase(ALICE) is Phase.PUBLISHED


def test_a_later_publish_merges_and_modifies_keeping_the_older_last_change() -> None:
    machine = Publisher()
    published(machine, busy(), office())
    save, modify = machine.publish(ALICE, (PresenceAttribute(Activity.AWAY),), at(5))
    assert save == Save(ALICE, (office(T0), PresenceAttribute(Activity.AWAY, at(5))), "e1",
                        T0.timestamp() + 3600)
    assert isinstance(modify, Modify)
    # The document orders its elements its own way.
    assert set(decode(modify.body).attributes) == set(save.attributes)


def test_a_confirmation_saves_the_entity_tag_and_when_it_expires() -> None:
    machine = Publisher()
    machine.publish(ALICE, (busy(),), T0)
    # The tag alone: the attributes went to the store before the PUBLISH.
    assert machine.confirmed(ALICE, "e9", 600, at(2)) == [
        SaveTag(ALICE, "e9", at(602).timestamp())
    ]
    # A refresh's confirmation, the most frequent, likewise; the record as a
    # whole (after a failed write, say) carries the new tag.
    assert machine.confirmed(ALICE, "e10", 600, at(500)) == [
        SaveTag(ALICE, "e10", at(1100).timestamp())
    ]
    assert machine.record(ALICE) == Save(ALICE, (busy(T0),), "e10", at(1100).timestamp())


def test_withdrawing_everything_saves_nothing_published_then_unpublishes() -> None:
    machine = Publisher()
    published(machine, busy())
    assert machine.withdraw(ALICE, frozenset(), at(1)) == [
        Save(ALICE, (), "e1", T0.timestamp() + 3600), Unpublish(ALICE)
    ]
    assert machine.phase(ALICE) is Phase.WITHDRAWING
    # Asked again while the removal is out: it is only waited for again.
    assert machine.withdraw(ALICE, frozenset(), at(2)) == [Unpublish(ALICE)]
    # The record goes once the publication is over.
    assert machine.removed(ALICE) == [Forget(ALICE)]
    assert machine.phase(ALICE) is Phase.UNPUBLISHED
    assert machine.attributes(ALICE) == ()


def test_withdrawing_some_publishes_the_rest_and_nothing_is_no_change() -> None:
    machine = Publisher()
    published(machine, busy(), office())
    save, modify = machine.withdraw(ALICE, frozenset({AttributeType.PLACE}), at(1))
    assert save.attributes == (busy(T0),) and isinstance(modify, Modify)
    assert machine.withdraw(ALICE, frozenset({AttributeType.SPHERE}), at(2)) == []


def test_withdrawing_what_was_never_published_forgets_any_record() -> None:
    assert Publisher().withdraw(ALICE, frozenset(), T0) == [Forget(ALICE)]


def test_a_publish_during_a_withdrawal_revives_the_publication() -> None:
    machine = Publisher()
    published(machine, busy())
    machine.withdraw(ALICE, frozenset(), at(1))
    save, modify = machine.publish(ALICE, (office(),), at(2))
    assert save.attributes == (office(at(2)),) and isinstance(modify, Modify)
    assert machine.phase(ALICE) is Phase.PUBLISHED
    # Its removal, if it still comes, leaves the state to publish afresh next time.
    assert machine.removed(ALICE) == []
    assert isinstance(machine.publish(ALICE, (busy(),), at(3))[1], Publish)


def test_after_a_removal_a_publish_starts_a_new_publication_without_the_old_tag() -> None:
    machine = Publisher()
    published(machine, busy())
    machine.withdraw(ALICE, frozenset(), at(1))
    machine.removed(ALICE)
    _, publish = machine.publish(ALICE, (office(),), at(2))
    assert isinstance(publish, Publish) and publish.etag is None
    assert decode(publish.body).attributes == (office(at(2)),)


def test_restore_resumes_the_server_s_publication_while_its_tag_lives() -> None:
    machine = Publisher()
    (publish,) = machine.restore(ALICE, (busy(T0),), "e1", at(600).timestamp(), at(100))
    assert isinstance(publish, Publish) and (publish.etag, publish.etag_left) == ("e1", 500.0)
    # Expired: a new publication.
    machine = Publisher()
    (publish,) = machine.restore(ALICE, (busy(T0),), "e1", at(600).timestamp(), at(601))
    assert isinstance(publish, Publish) and publish.etag is None
    # Published again by a request meanwhile: nothing to restore.
    assert machine.restore(ALICE, (office(T0),), None, None, at(602)) == []


def test_restore_ends_a_withdrawal_cut_short_or_forgets_it_when_expired() -> None:
    machine = Publisher()
    publish, unpublish = machine.restore(ALICE, (), "e1", at(600).timestamp(), T0)
    assert isinstance(publish, Publish) and publish.etag == "e1"
    assert decode(publish.body).attributes == ()
    assert unpublish == Unpublish(ALICE)
    assert machine.removed(ALICE) == [Forget(ALICE)]
    assert Publisher().restore(ALICE, (), "e1", at(-1).timestamp(), T0) == [Forget(ALICE)]


def test_resync_modifies_a_publication_with_a_fresh_document() -> None:
    machine = Publisher()
    published(machine, busy())
    (modify,) = machine.resync(ALICE, at(30))
    assert isinstance(modify, Modify) and decode(modify.body).attributes == (busy(T0),)
    machine.withdraw(ALICE, frozenset(), at(31))
    assert machine.resync(ALICE, at(32)) == []  # being withdrawn: not published again


def test_rules_changes_in_a_row_share_one_republication_of_the_same_body() -> None:
    machine = Publisher()
    body = published(machine, busy())
    assert machine.get_timer() is None
    for second in (1.0, 1.05, 1.1):
        assert machine.rules_changed(ALICE, at(second)) == []
    assert machine.get_timer() == at(1 + REPUBLISH_DELAY).timestamp()
    assert machine.handle_timer(at(1.1)) == []  # not due yet
    assert machine.handle_timer(at(1 + REPUBLISH_DELAY)) == [Republish(ALICE)]
    assert machine.get_timer() is None
    assert machine.republish(ALICE, at(1.3)) == [Modify(ALICE, body)]
    # A later change is news again.
    machine.rules_changed(ALICE, at(5))
    assert machine.handle_timer(at(6)) == [Republish(ALICE)]


def test_a_republication_sends_the_latest_state() -> None:
    machine = Publisher()
    published(machine, busy())
    machine.rules_changed(ALICE, at(1))
    _, modify = machine.publish(ALICE, (office(),), at(1.1))
    assert isinstance(modify, Modify)
    assert machine.handle_timer(at(2)) == [Republish(ALICE)]
    assert machine.republish(ALICE, at(2)) == [Modify(ALICE, modify.body)]


def test_no_republication_without_a_publication_or_while_it_fails_or_ends() -> None:
    machine = Publisher()
    assert machine.rules_changed(ALICE, T0) == [] and machine.get_timer() is None
    published(machine, busy())
    machine.rules_changed(ALICE, at(1))
    machine.failed(ALICE)  # it retries with its body by itself
    assert machine.republish(ALICE, at(2)) == []
    machine.confirmed(ALICE, "e2", 3600, at(3))
    assert machine.republish(ALICE, at(3)) != []
    machine.withdraw(ALICE, frozenset(), at(4))
    assert machine.republish(ALICE, at(5)) == []
    # A removal also drops the timer of a re-publication no longer wanted.
    machine.publish(ALICE, (busy(),), at(6))
    machine.rules_changed(ALICE, at(6))
    machine.removed(ALICE)
    assert machine.get_timer() is None


def test_republish_delay_is_the_machine_s_to_choose() -> None:
    machine = Publisher(republish_delay=0.0)
    published(machine, busy())
    machine.rules_changed(ALICE, at(1))
    assert machine.handle_timer(at(1)) == [Republish(ALICE)]


def test_undo_puts_back_what_a_request_whose_save_failed_changed() -> None:
    machine = Publisher()
    # A first publish not saved: as if it never came.
    mark = machine.mark(ALICE)
    machine.publish(ALICE, (busy(),), T0)
    machine.undo(mark)
    assert machine.phase(ALICE) is Phase.UNPUBLISHED and machine.addresses() == []
    # A change and a withdrawal not saved: the publication stays as it was,
    # and the next change is a modify of it, without what was refused.
    published(machine, office())
    for request in (
        lambda: machine.publish(ALICE, (busy(),), at(5)),
        lambda: machine.withdraw(ALICE, frozenset(), at(5)),
    ):
        mark = machine.mark(ALICE)
        request()
        machine.undo(mark)
        assert machine.phase(ALICE) is Phase.PUBLISHED
        assert machine.attributes(ALICE) == (office(T0),)
    save, modify = machine.publish(ALICE, (PresenceAttribute(Activity.AWAY),), at(9))
    assert isinstance(modify, Modify)
    assert save.attributes == (office(T0), PresenceAttribute(Activity.AWAY, at(9)))
    assert save.etag == "e1"
