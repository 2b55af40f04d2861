"""pidf/watcherinfo.py: RFC 3858 documents and the state built from them."""

import pytest

from pidf.errors import RemoteProtocolError
from pidf.watcherinfo import Outcome, Watcher, WatcherInfo, WatcherInfoState, WatcherStatus

RESOURCE = "sip:alice@example.com"


def doc(version: int, state: str, *watchers: str, resource: str = RESOURCE) -> bytes:
    return f"""<?xml version="1.0"?>
<watcherinfo xmlns="urn:ietf:params:xml:ns:watcherinfo" version="{version}" state="{state}">
  <watcher-list resource="{resource}" package="presence">{"".join(watchers)}</watcher-list>
</watcherinfo>""".encode()


def w(wid: str, status: str, uri: str, event: str = "subscribe", extra: str = "") -> str:
    return f'<watcher id="{wid}" status="{status}" event="{event}"{extra}>{uri}</watcher>'


def test_parse_full_document_with_every_field() -> None:
    info = WatcherInfo.parse(
        doc(
            0,
            "full",
            w(
                "7768a77s",
                "pending",
                "sip:bob@example.com",
                extra=' display-name="Bob" expiration="3600" duration-subscribed="12"',
            ),
            w("8ajksjda7s", "active", "sip:carol@example.com", event="approved"),
        )
    )
    assert (info.version, info.full) == (0, True)
    (watchers,) = info.lists
    assert (watchers.resource, watchers.package) == (RESOURCE, "presence")
    assert watchers.watchers[0] == Watcher(
        id="7768a77s",
        uri="sip:bob@example.com",
        status=WatcherStatus.PENDING,
        event="subscribe",
        display_name="Bob",
        expiration=3600,
        duration_subscribed=12,
    )
    assert watchers.watchers[1].status is WatcherStatus.ACTIVE


@pytest.mark.parametrize(
    "body",
    [
        b"<watcherinfo xmlns='urn:ietf:params:xml:ns:watcherinfo' state='full'/>",
        b"<watcherinfo xmlns='urn:ietf:params:xml:ns:watcherinfo' version='x' state='full'/>",
        b"<watcherinfo xmlns='urn:ietf:params:xml:ns:watcherinfo' version='1' state='half'/>",
        doc(1, "full", w("a", "sleeping", "sip:b@c")),
        doc(1, "full", '<watcher id="a" status="active">sip:b@c</watcher>'),
        doc(1, "full", w("a", "active", "")),
        b"<presence xmlns='urn:ietf:params:xml:ns:pidf'/>",
        b"<watcherinfo",
    ],
)
def test_malformed_documents_raise(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        WatcherInfo.parse(body)


def test_partial_updates_apply_on_top_of_full_state() -> None:
    state = WatcherInfoState()
    assert (
        state.apply(WatcherInfo.parse(doc(0, "full", w("a", "pending", "sip:bob@x"))))
        is Outcome.APPLIED
    )
    assert (
        state.apply(WatcherInfo.parse(doc(1, "partial", w("b", "waiting", "sip:eve@x"))))
        is Outcome.APPLIED
    )
    assert (
        state.apply(WatcherInfo.parse(doc(2, "partial", w("a", "active", "sip:bob@x"))))
        is Outcome.APPLIED
    )
    by_id = {x.id: x.status for x in state.watchers(RESOURCE)}
    assert by_id == {"a": WatcherStatus.ACTIVE, "b": WatcherStatus.WAITING}
    assert (
        state.apply(WatcherInfo.parse(doc(3, "partial", w("b", "terminated", "sip:eve@x"))))
        is Outcome.APPLIED
    )
    assert [x.id for x in state.watchers(RESOURCE)] == ["a"]
    assert state.version == 3


def test_old_or_repeated_versions_are_ignored() -> None:
    state = WatcherInfoState()
    state.apply(WatcherInfo.parse(doc(5, "full", w("a", "active", "sip:bob@x"))))
    assert (
        state.apply(WatcherInfo.parse(doc(5, "partial", w("a", "terminated", "sip:bob@x"))))
        is Outcome.STALE
    )
    assert state.apply(WatcherInfo.parse(doc(4, "full"))) is Outcome.STALE
    assert [x.id for x in state.watchers(RESOURCE)] == ["a"]


def test_version_gap_is_detected_and_a_full_document_recovers() -> None:
    state = WatcherInfoState()
    state.apply(WatcherInfo.parse(doc(0, "full", w("a", "active", "sip:bob@x"))))
    assert (
        state.apply(WatcherInfo.parse(doc(2, "partial", w("b", "pending", "sip:eve@x"))))
        is Outcome.GAP
    )
    assert not state.synchronised
    assert state.watchers(RESOURCE) == ()
    # Further partials cannot help until a full document comes.
    assert state.apply(WatcherInfo.parse(doc(3, "partial"))) is Outcome.GAP
    assert (
        state.apply(WatcherInfo.parse(doc(7, "full", w("b", "pending", "sip:eve@x"))))
        is Outcome.APPLIED
    )
    assert [x.uri for x in state.watchers(RESOURCE)] == ["sip:eve@x"]


def test_partial_before_any_full_is_a_gap() -> None:
    assert WatcherInfoState().apply(WatcherInfo.parse(doc(0, "partial"))) is Outcome.GAP


def test_resources_are_kept_apart() -> None:
    state = WatcherInfoState()
    body = b"""<watcherinfo xmlns="urn:ietf:params:xml:ns:watcherinfo" version="0" state="full">
      <watcher-list resource="sip:a@x" package="presence">
        <watcher id="1" status="active" event="subscribe">sip:w@x</watcher>
      </watcher-list>
      <watcher-list resource="sip:b@x" package="presence">
        <watcher id="2" status="pending" event="subscribe">sip:v@x</watcher>
      </watcher-list>
    </watcherinfo>"""
    state.apply(WatcherInfo.parse(body))
    assert set(state.resources()) == {("sip:a@x", "presence"), ("sip:b@x", "presence")}
    assert [x.id for x in state.watchers("sip:b@x")] == ["2"]


def test_kamailio_capture() -> None:
    from pathlib import Path

    body = (
        Path(__file__).resolve().parent.parent / "data/pidf/kamailio-watcherinfo.xml"
    ).read_bytes()
    info = WatcherInfo.parse(body)
    (watchers,) = info.lists
    assert (info.version, info.full, len(watchers.watchers)) == (1, True, 1)
    assert watchers.watchers[0].status is WatcherStatus.ACTIVE
