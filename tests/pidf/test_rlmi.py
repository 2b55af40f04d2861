"""RLMI documents (RFC 4662 §5) and the list state, on captured rls NOTIFYs."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pidf.errors import RemoteProtocolError
from pidf.rlmi import (
    Change,
    Instance,
    InstanceState,
    ListState,
    RlmiList,
    parse_rlmi,
)
from sip.multipart import parse_multipart

DATA = Path(__file__).parent.parent / "data" / "rls"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NS = 'xmlns="urn:ietf:params:xml:ns:rlmi"'
PIDF = (
    '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="{uri}">'
    "<tuple id='t'><status><basic>{basic}</basic></status></tuple></presence>"
)


def notify(name: str) -> tuple[RlmiList, dict[str, tuple[str, bytes]]]:
    """A captured NOTIFY (tests/data/rls): its RLMI document and its parts by Content-ID."""
    head, _, body = (DATA / name).read_bytes().partition(b"\r\n\r\n")
    multipart = parse_multipart(head.decode().removeprefix("Content-Type: "), body)
    return parse_rlmi(multipart.root.body), multipart.by_content_id()


def doc(inner: str) -> bytes:
    return f'<list {NS} uri="a" version="1" fullState="true">{inner}</list>'.encode()


def rlmi(version: int, full: bool, resources: str, uri: str = "sip:l@x") -> RlmiList:
    state = "true" if full else "false"
    head = f'<list {NS} uri="{uri}" version="{version}" fullState="{state}">'
    return parse_rlmi(f"{head}{resources}</list>".encode())


def pidf(uri: str, basic: str = "open") -> tuple[str, bytes]:
    return "application/pidf+xml", PIDF.format(uri=uri, basic=basic).encode()


def test_full_state_lists_bare_resources() -> None:
    document, parts = notify("active-pending-1.txt")
    assert document.version == 1 and document.full_state
    assert document.uri.startswith("sip:friends-")
    assert len(document.resources) == 3
    assert all(r.instances == () for r in document.resources)
    assert len(parts) == 1  # only the RLMI root


def test_partial_state_has_instances_with_parts() -> None:
    document, parts = notify("change-unpublish-2.txt")
    assert (document.version, document.full_state) == (2, False)
    assert len(document.resources) == 2
    for resource in document.resources:
        (instance,) = resource.instances
        assert instance.state is InstanceState.ACTIVE
        assert instance.cid is not None and instance.cid in parts
        assert parts[instance.cid][0] == "application/pidf+xml"


def test_captured_sequence_builds_the_list() -> None:
    state = ListState()
    first = state.apply(*notify("change-unpublish-1.txt"))
    assert {c.changes for c in first.changes} == {frozenset({Change.ADDED})}
    assert all(m.state is None for m in state.members.values())
    assert state.complete

    second = state.apply(*notify("change-unpublish-2.txt"))
    assert not second.gap and not second.errors
    assert len(second.changes) == 2
    for change in second.changes:
        assert change.changes == {Change.STATE_CHANGED, Change.DOCUMENT_CHANGED}
        assert change.member.presence is not None and change.member.presence.open

    third = state.apply(*notify("change-unpublish-3.txt"))
    (changed,) = third.changes
    assert changed.changes == {Change.DOCUMENT_CHANGED}
    assert changed.member.document is not None and b"second" in changed.member.document

    fourth = state.apply(*notify("change-unpublish-4.txt"))
    (closed,) = fourth.changes
    assert closed.uri == changed.uri
    assert closed.member.presence is not None and not closed.member.presence.open
    assert closed.member.state is InstanceState.ACTIVE


def test_older_and_repeated_versions_are_ignored() -> None:
    state = ListState()
    state.apply(*notify("change-unpublish-1.txt"))
    state.apply(*notify("change-unpublish-3.txt"))  # 2 was lost
    before = dict(state.members)
    for name in ("change-unpublish-2.txt", "change-unpublish-3.txt"):
        update = state.apply(*notify(name))
        assert update.ignored and update.changes == ()
    assert state.members == before
    assert state.version == 3


def test_a_gap_is_reported_and_partial_state_still_applied() -> None:
    state = ListState()
    state.apply(*notify("change-unpublish-1.txt"))
    update = state.apply(*notify("change-unpublish-3.txt"))
    assert update.gap
    assert not state.complete
    assert [c.changes for c in update.changes] == [{Change.STATE_CHANGED, Change.DOCUMENT_CHANGED}]
    # A full state after a gap (RFC 4662 §5.2: what a refresh asks for)
    # makes the state complete again, and it alone decides the members.
    assert state.uri is not None
    full = state.apply(rlmi(9, True, "", uri=state.uri), {})
    assert full.gap and state.complete
    assert state.members == {}
    assert {c.changes for c in full.changes} == {frozenset({Change.REMOVED})}


def test_partial_state_first_is_a_gap() -> None:
    state = ListState()
    update = state.apply(*notify("change-unpublish-2.txt"))
    assert update.gap and not state.complete
    assert len(state.members) == 2


def test_full_state_removes_unlisted_members() -> None:
    state = ListState()
    state.apply(rlmi(1, True, '<resource uri="sip:a@x"/><resource uri="sip:b@x"/>'), {})
    update = state.apply(rlmi(2, True, '<resource uri="sip:b@x"/>'), {})
    assert [(c.uri, c.changes) for c in update.changes] == [
        ("sip:a@x", frozenset({Change.REMOVED}))
    ]
    assert list(state.members) == ["sip:b@x"]


def test_pending_and_terminated_instances_with_reason() -> None:
    state = ListState()
    update = state.apply(
        rlmi(
            1,
            True,
            '<resource uri="sip:a@x"><name>Alice</name>'
            '<instance id="1" state="pending"/></resource>'
            '<resource uri="sip:b@x"><instance id="2" state="terminated" reason="rejected"/>'
            "</resource>",
        ),
        {},
    )
    assert not update.errors
    a, b = state.members["sip:a@x"], state.members["sip:b@x"]
    assert (a.state, a.names, a.presence) == (InstanceState.PENDING, ("Alice",), None)
    assert (b.state, b.reason) == (InstanceState.TERMINATED, "rejected")
    # Later terminated: a state change, the last document dropped.
    state.apply(
        rlmi(
            2,
            False,
            '<resource uri="sip:a@x"><instance id="1" state="active" cid="c1"/></resource>',
        ),
        {"c1": pidf("sip:a@x")},
    )
    assert state.members["sip:a@x"].presence is not None
    update = state.apply(
        rlmi(
            3,
            False,
            '<resource uri="sip:a@x">'
            '<instance id="1" state="terminated" reason="deactivated"/></resource>',
        ),
        {},
    )
    (change,) = update.changes
    assert change.changes == {Change.STATE_CHANGED, Change.DOCUMENT_CHANGED}
    assert change.member.presence is None and change.member.reason == "deactivated"


ACTIVE_C2 = '<resource uri="sip:a@x"><instance id="1" state="active" cid="c2"/></resource>'


@pytest.mark.parametrize(
    "parts",
    [
        {},
        {"c2": ("application/pidf+xml", b"<x")},
        {"c2": ("text/plain", b"x")},
    ],
)
def test_a_missing_or_bad_part_keeps_the_old_document(
    parts: dict[str, tuple[str, bytes]],
) -> None:
    state = ListState()
    state.apply(
        rlmi(
            1, True, '<resource uri="sip:a@x"><instance id="1" state="active" cid="c1"/></resource>'
        ),
        {"c1": pidf("sip:a@x")},
    )
    old = state.members["sip:a@x"]
    update = state.apply(rlmi(2, False, ACTIVE_C2), parts)
    assert len(update.errors) == 1 and "sip:a@x" in update.errors[0]
    assert update.changes == ()
    assert state.members["sip:a@x"] == old


def test_a_new_part_replaces_the_document() -> None:
    state = ListState()
    state.apply(rlmi(1, True, '<resource uri="sip:a@x"/>'), {})
    update = state.apply(rlmi(2, False, ACTIVE_C2), {"c2": pidf("sip:a@x", "closed")})
    (change,) = update.changes
    assert change.member.presence is not None and change.member.presence.open is False
    # The same bytes again: no change reported.
    assert state.apply(rlmi(3, False, ACTIVE_C2), {"c2": pidf("sip:a@x", "closed")}).changes == ()


def test_another_lists_document_is_refused() -> None:
    state = ListState()
    state.apply(rlmi(1, True, ""), {})
    with pytest.raises(RemoteProtocolError, match="expected"):
        state.apply(rlmi(2, True, "", uri="sip:other@x"), {})


def test_cid_with_angle_brackets_is_accepted() -> None:
    document = rlmi(
        1,
        False,
        '<resource uri="sip:a@x"><instance id="1" state="active" cid="&lt;c1&gt;"/></resource>',
    )
    assert document.resources[0].instances == (Instance("1", InstanceState.ACTIVE, None, "c1"),)


@pytest.mark.parametrize(
    ("document", "fault"),
    [
        (b'<list xmlns="urn:other" uri="a" version="1" fullState="true"/>', "not an RLMI"),
        (f'<list {NS} version="1" fullState="true"/>'.encode(), "without uri"),
        (f'<list {NS} uri="a" version="-1" fullState="true"/>'.encode(), "version"),
        (f'<list {NS} uri="a" version="99999999999" fullState="true"/>'.encode(), "version"),
        (f'<list {NS} uri="a" version="1" fullState="yes"/>'.encode(), "fullState"),
        (doc('<resource/>'), "uri"),
        (doc('<resource uri="b"/><resource uri="b"/>'), "twice"),
        (doc('<resource uri="b"><instance id="1" state="odd"/></resource>'), "state"),
        (doc('<resource uri="b"><instance state="active"/></resource>'), "id"),
        (b"<!DOCTYPE x><list/>", "document type"),
    ],
)  # fmt: skip
def test_malformed_documents_are_refused(document: bytes, fault: str) -> None:
    with pytest.raises(RemoteProtocolError, match=fault):
        parse_rlmi(document)


@FUZZ
@given(st.binary(max_size=400))
def test_garbage_raises_only_remote_protocol_error(data: bytes) -> None:
    try:
        parse_rlmi(data)
    except RemoteProtocolError:
        pass


@FUZZ
@given(st.data())
def test_mutated_captures_raise_only_remote_protocol_error(data: st.DataObject) -> None:
    name = data.draw(
        st.sampled_from(["change-unpublish-2.txt", "edited-3.txt", "active-pending-1.txt"])
    )
    head, _, body = (DATA / name).read_bytes().partition(b"\r\n\r\n")
    root = parse_multipart(head.decode().removeprefix("Content-Type: "), body).root.body
    position = data.draw(st.integers(0, len(root) - 1))
    replacement = data.draw(st.binary(max_size=8))
    try:
        document = parse_rlmi(root[:position] + replacement + root[position + 2 :])
    except RemoteProtocolError:
        return
    ListState().apply(document, {})
