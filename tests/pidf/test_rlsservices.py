"""Who a list lists, read from its owner's rls-services document (RFC 4826 §4)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pidf.errors import RemoteProtocolError
from pidf.rlsservices import service_members

DOCUMENT = b"""<?xml version="1.0" encoding="UTF-8"?>
<rls-services xmlns="urn:ietf:params:xml:ns:rls-services"
    xmlns:rl="urn:ietf:params:xml:ns:resource-lists">
  <service uri="sip:friends@example.com">
    <list>
      <rl:entry uri="sip:a@example.com"/>
      <rl:list name="close"><rl:entry uri="sip:b@example.com"/></rl:list>
      <rl:entry uri="sip:a@example.com"/>
    </list>
    <packages><package>presence</package></packages>
  </service>
  <service uri="sip:team@example.com">
    <resource-list>http://xcap.example.com/resource-lists/users/sip:w@example.com/index/~~/resource-lists/list%5b@name=%22team%22%5d</resource-list>
    <packages><package>presence</package></packages>
  </service>
  <service uri="sip:others@example.com">
    <list><rl:entry-ref ref="resource-lists/users/sip:w@example.com/index/~~/x"/></list>
  </service>
</rls-services>
"""


def test_an_inline_list_nested_lists_flattened() -> None:
    assert service_members(DOCUMENT, "sip:friends@example.com") == frozenset(
        {"sip:a@example.com", "sip:b@example.com"}
    )


def test_a_list_not_all_in_the_document_cannot_be_told() -> None:
    assert service_members(DOCUMENT, "sip:team@example.com") is None
    assert service_members(DOCUMENT, "sip:others@example.com") is None


def test_a_service_the_document_does_not_hold_lists_nobody() -> None:
    assert service_members(DOCUMENT, "sip:gone@example.com") == frozenset()


@pytest.mark.parametrize("body", [
    b"<ruleset xmlns='urn:ietf:params:xml:ns:common-policy'/>",
    b"not xml",
    b"""<rls-services xmlns="urn:ietf:params:xml:ns:rls-services"
        xmlns:rl="urn:ietf:params:xml:ns:resource-lists"><service uri="sip:s@x">
        <list><rl:entry/></list></service></rls-services>""",
])
def test_a_document_that_is_not_usable_raises_the_protocol_error(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        service_members(body, "sip:s@x")


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.data())
def test_mutated_documents_raise_only_remote_protocol_error(data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(DOCUMENT) - 1))
    replacement = data.draw(st.binary(max_size=8))
    mutated = DOCUMENT[:position] + replacement + DOCUMENT[position + 2 :]
    try:
        members = service_members(mutated, "sip:friends@example.com")
    except RemoteProtocolError:
        return
    assert members is None or all(isinstance(uri, str) and uri for uri in members)
