"""RFC 3903 publications driven by a manual clock, without a user agent."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.errors import LocalProtocolError
from sip.message import Request, Response
from sip.publication import (
    Publication,
    PublicationConfirmed,
    PublicationFailed,
    PublicationRemoved,
    PublicationState,
    RefreshPolicy,
)
from sip.uri import SipURI

AOR = SipURI.parse("sip:alice@example.com")
BODY = b"<presence>open</presence>"
BODY2 = b"<presence>closed</presence>"
BODY3 = b"<presence>busy</presence>"


def make(*, expires: int = 3600, spread: float = 0.0) -> Publication:
    return Publication(
        1, AOR, call_id="call-1", local_tag="tag-1", expires=expires, spread=spread
    )


def answer(request: Request, status: int, **headers: str) -> Response:
    response = request.response(status, to_tag="srv")
    for name, value in headers.items():
        response.headers.add(name.replace("_", "-"), value)
    return response


def only_request(actions: list[object]) -> Request:
    requests = [a for a in actions if isinstance(a, Request)]
    assert len(requests) == 1, actions
    return requests[0]


def events(actions: list[object]) -> list[object]:
    return [a for a in actions if not isinstance(a, Request)]


def published(pub: Publication, now: float = 0.0, etag: str = "e1") -> Request:
    """Publish BODY and confirm it with ``etag``; returns the PUBLISH sent."""
    request = only_request(pub.publish(BODY, now))
    pub.receive_response(answer(request, 200, SIP_ETag=etag, Expires="3600"), now)
    assert pub.state is PublicationState.PUBLISHED
    return request


# -- initial publication and refresh -------------------------------------------


def test_initial_publish_shape() -> None:
    pub = make()
    request = only_request(pub.publish(BODY, 0.0))
    assert request.method == "PUBLISH"
    assert request.uri == AOR
    assert request.event is not None and request.event.package == "presence"
    assert request.expires == 3600
    assert "SIP-If-Match" not in request.headers
    assert request.body == BODY
    assert request.content_type == "application/pidf+xml"
    assert request.from_.tag == "tag-1" and request.to.tag is None
    assert request.call_id == "call-1"
    assert request.cseq.method == "PUBLISH"
    assert pub.state is PublicationState.SENDING


def test_2xx_confirms_and_arms_refresh_inside_the_window() -> None:
    for spread in (0.0, 0.5, 1.0):
        pub = make(spread=spread)
        request = only_request(pub.publish(BODY, 100.0))
        actions = pub.receive_response(answer(request, 200, SIP_ETag="abc", Expires="1800"), 101.0)
        assert actions == [PublicationConfirmed(1, "abc", 1800)]
        assert pub.etag == "abc"
        assert pub.expires_at == 101.0 + 1800
        timer = pub.get_timer()
        assert timer is not None
        delay = timer - 101.0
        assert 0.75 * 1800 <= delay <= 0.9 * 1800
        assert delay <= 1800 - 32


def test_refresh_delay_keeps_the_guard_before_expiry() -> None:
    policy = RefreshPolicy()
    for expires in (120, 600, 3600):
        for spread in (0.0, 0.3, 1.0):
            delay = policy.refresh_delay(expires, spread)
            assert delay <= expires - 32
            assert delay >= 0.5 * expires
    # Distinct spreads give distinct instants.
    assert policy.refresh_delay(3600, 0.1) != policy.refresh_delay(3600, 0.2)


def test_a_refresh_grid_moves_refreshes_back_onto_it() -> None:
    policy = RefreshPolicy(grid=1.0)
    plain = RefreshPolicy()
    for now in (0.0, 100.25, 101.999):
        for spread in (0.0, 0.37, 1.0):
            at = policy.refresh_at(now, 600, spread)
            exact = plain.refresh_at(now, 600, spread)
            assert at == float(int(exact)) and exact - 1.0 < at <= exact
    # Granted a moment apart, refreshed at one instant: one burst, not two.
    assert policy.refresh_at(100.1, 600, 0.5) == policy.refresh_at(100.6, 600, 0.5)
    # Moved back by half its delay at most: a grant of a second or two is not
    # refreshed the moment it is granted, over and over.
    for now in (10.0, 10.3, 10.9):
        for expires in (1, 2, 3):
            delay = plain.refresh_delay(expires, 0.0)
            assert now + delay / 2 <= policy.refresh_at(now, expires, 0.0) <= now + delay
    assert policy.refresh_at(10.0, 1, 0.0) == 10.5  # the grid's 10.0 would be at once
    assert RefreshPolicy(grid=3600.0).refresh_at(10.0, 60, 0.0) == 10.0 + plain.refresh_delay(
        60, 0.0)
    assert plain.refresh_at(7.5, 600, 0.5) == 7.5 + plain.refresh_delay(600, 0.5)
    with pytest.raises(ValueError):
        RefreshPolicy(grid=-1.0)


def test_a_publication_refreshes_on_the_policy_grid() -> None:
    pub = Publication(1, AOR, call_id="call-1", local_tag="tag-1", expires=3600, spread=0.3,
                      policy=RefreshPolicy(grid=1.0))
    request = only_request(pub.publish(BODY, 0.0))
    pub.receive_response(answer(request, 200, SIP_ETag="e1", Expires="600"), 12.345)
    timer = pub.get_timer()
    assert timer is not None and timer == int(timer)
    assert only_request(pub.handle_timer(timer)).headers.get("SIP-If-Match") == "e1"


def test_2xx_without_expires_uses_the_requested_value() -> None:
    pub = make(expires=600)
    request = only_request(pub.publish(BODY, 0.0))
    actions = pub.receive_response(answer(request, 200, SIP_ETag="x"), 0.0)
    assert actions == [PublicationConfirmed(1, "x", 600)]


def test_refresh_carries_if_match_and_no_body() -> None:
    pub = make()
    first = published(pub, etag="e1")
    timer = pub.get_timer()
    assert timer is not None
    assert pub.handle_timer(timer - 1) == []  # not yet
    refresh = only_request(pub.handle_timer(timer))
    assert refresh.headers.get("SIP-If-Match") == "e1"
    assert refresh.body == b""
    assert "Content-Type" not in refresh.headers
    assert refresh.expires == 3600
    assert refresh.cseq.seq == first.cseq.seq + 1
    assert refresh.call_id == first.call_id
    actions = pub.receive_response(answer(refresh, 200, SIP_ETag="e2", Expires="3600"), timer)
    assert actions == [PublicationConfirmed(1, "e2", 3600)]
    assert pub.etag == "e2"
    assert pub.body == BODY  # the desired state survives the refresh


def test_2xx_without_etag_is_a_failure_to_retry() -> None:
    pub = make()
    request = only_request(pub.publish(BODY, 0.0))
    (failed,) = pub.receive_response(answer(request, 200, Expires="3600"), 0.0)
    assert isinstance(failed, PublicationFailed)
    assert failed.retry_at is not None
    assert pub.state is PublicationState.RETRY_WAIT


# -- modify ----------------------------------------------------------------------


def test_modify_while_published_sends_body_with_if_match() -> None:
    pub = make()
    published(pub, etag="e1")
    modify = only_request(pub.publish(BODY2, 10.0))
    assert modify.headers.get("SIP-If-Match") == "e1"
    assert modify.body == BODY2
    assert modify.content_type == "application/pidf+xml"
    assert pub.get_timer() is None  # the refresh waits for this answer


def test_modify_while_outstanding_waits_and_sends_only_the_latest() -> None:
    pub = make()
    first = only_request(pub.publish(BODY, 0.0))
    # RFC 3903 §4.1: one PUBLISH outstanding at a time.
    assert pub.publish(BODY2, 1.0) == []
    assert pub.publish(BODY3, 2.0) == []
    actions = pub.receive_response(answer(first, 200, SIP_ETag="e1", Expires="3600"), 3.0)
    assert events(actions) == [PublicationConfirmed(1, "e1", 3600)]
    second = only_request(actions)
    assert second.body == BODY3
    assert second.headers.get("SIP-If-Match") == "e1"
    assert pub.state is PublicationState.SENDING
    assert pub.get_timer() is None
    actions = pub.receive_response(answer(second, 200, SIP_ETag="e2", Expires="3600"), 4.0)
    assert actions == [PublicationConfirmed(1, "e2", 3600)]  # nothing more to send


# -- errors -----------------------------------------------------------------------


def test_412_republishes_the_full_state_without_if_match() -> None:
    pub = make()
    published(pub, etag="e1")
    timer = pub.get_timer()
    assert timer is not None
    refresh = only_request(pub.handle_timer(timer))
    assert refresh.body == b""
    # RFC 3903 §6: the ESC does not know e1 any more.
    retry = only_request(pub.receive_response(answer(refresh, 412), timer))
    assert "SIP-If-Match" not in retry.headers
    assert retry.body == BODY
    assert retry.content_type == "application/pidf+xml"
    assert pub.etag is None
    actions = pub.receive_response(answer(retry, 200, SIP_ETag="e9", Expires="3600"), timer)
    assert actions == [PublicationConfirmed(1, "e9", 3600)]


def test_423_retries_with_min_expires() -> None:
    pub = make(expires=60)
    request = only_request(pub.publish(BODY, 0.0))
    retry = only_request(pub.receive_response(answer(request, 423, Min_Expires="300"), 0.0))
    assert retry.expires == 300
    assert retry.body == BODY
    assert retry.cseq.seq == request.cseq.seq + 1
    # A second 423 that asks for no more than we sent is a failure.
    (failed,) = pub.receive_response(answer(retry, 423, Min_Expires="300"), 0.0)
    assert isinstance(failed, PublicationFailed) and failed.status == 423


def test_5xx_backs_off_exponentially_and_retries_at_retry_at() -> None:
    pub = make()
    request = only_request(pub.publish(BODY, 0.0))
    now = 0.0
    delays = []
    for _ in range(4):
        (failed,) = pub.receive_response(answer(request, 503), now)
        assert isinstance(failed, PublicationFailed)
        assert failed.status == 503 and failed.retry_at is not None
        assert pub.state is PublicationState.RETRY_WAIT
        assert pub.get_timer() == failed.retry_at
        delays.append(failed.retry_at - now)
        assert pub.handle_timer(failed.retry_at - 0.01) == []
        now = failed.retry_at
        request = only_request(pub.handle_timer(now))
        assert request.body == BODY and "SIP-If-Match" not in request.headers
    assert delays == [1.0, 2.0, 4.0, 8.0]
    # Success resets the backoff.
    pub.receive_response(answer(request, 200, SIP_ETag="e", Expires="3600"), now)
    refresh = only_request(pub.handle_timer(pub.get_timer() or 0.0))
    (failed,) = pub.receive_response(answer(refresh, 500), 5000.0)
    assert isinstance(failed, PublicationFailed) and failed.retry_at == 5001.0


def test_backoff_is_capped() -> None:
    policy = RefreshPolicy(backoff_initial=1.0, backoff_max=300.0)
    assert policy.backoff(30, None) == 300.0
    assert policy.backoff(1, 600) == 600.0


def test_backoff_differs_between_publications_that_failed_together() -> None:
    policy = RefreshPolicy(backoff_initial=1.0)
    spreads = [i / 10 + 0.013 for i in range(10)]
    for failures in (1, 2, 3):
        delays = [policy.backoff(failures, None, spread) for spread in spreads]
        base = 2.0 ** (failures - 1)
        assert all(base <= d < 2 * base for d in delays)
        assert len({round(d, 3) for d in delays}) == len(delays)


def test_retry_after_is_honoured() -> None:
    pub = make()
    request = only_request(pub.publish(BODY, 10.0))
    (failed,) = pub.receive_response(answer(request, 503, Retry_After="120"), 10.0)
    assert isinstance(failed, PublicationFailed)
    assert failed.retry_at == 130.0
    assert only_request(pub.handle_timer(130.0)).body == BODY


def test_timeout_is_retried() -> None:
    pub = make()
    only_request(pub.publish(BODY, 0.0))
    (failed,) = pub.transaction_failed("timeout", 32.0)
    assert failed == PublicationFailed(1, None, "timeout", 33.0)
    assert only_request(pub.handle_timer(33.0)).body == BODY


def test_failed_refresh_keeps_the_live_etag() -> None:
    pub = make()
    published(pub, etag="e1")
    timer = pub.get_timer()
    assert timer is not None
    refresh = only_request(pub.handle_timer(timer))
    pub.receive_response(answer(refresh, 500), timer)
    retry = only_request(pub.handle_timer(timer + 1))
    assert retry.headers.get("SIP-If-Match") == "e1"


@pytest.mark.parametrize("status", [400, 403, 415, 489])
def test_permanent_errors_stop_in_failed(status: int) -> None:
    pub = make()
    request = only_request(pub.publish(BODY, 0.0))
    (failed,) = pub.receive_response(answer(request, status), 0.0)
    assert isinstance(failed, PublicationFailed)
    assert failed.status == status and failed.retry_at is None
    assert pub.state is PublicationState.FAILED
    assert pub.get_timer() is None
    assert pub.handle_timer(1e9) == []
    # A later publish starts over.
    again = only_request(pub.publish(BODY2, 5.0))
    assert again.body == BODY2


@pytest.mark.parametrize("status", [401, 407])
def test_refused_credentials_are_not_retried(status: int) -> None:
    # The user agent answers one challenge itself; a 401/407 that reaches the
    # publication means the credentials are missing or wrong.
    pub = make()
    request = only_request(pub.publish(BODY, 0.0))
    (failed,) = pub.receive_response(answer(request, status), 0.0)
    assert isinstance(failed, PublicationFailed) and failed.retry_at is None
    assert pub.state is PublicationState.FAILED


def test_late_answers_are_ignored() -> None:
    pub = make()
    request = published(pub)
    assert pub.receive_response(answer(request, 500), 1.0) == []
    assert pub.transaction_failed("timeout", 1.0) == []
    assert pub.state is PublicationState.PUBLISHED


# -- removal ------------------------------------------------------------------------


def test_remove_sends_expires_0_with_if_match_and_no_body() -> None:
    pub = make()
    published(pub, etag="e1")
    remove = only_request(pub.remove(10.0))
    assert remove.expires == 0
    assert remove.headers.get("SIP-If-Match") == "e1"
    assert remove.body == b"" and "Content-Type" not in remove.headers
    assert pub.state is PublicationState.REMOVING
    assert pub.get_timer() is None
    assert pub.remove(11.0) == []  # already under way
    assert pub.receive_response(answer(remove, 200, SIP_ETag="e2"), 12.0) == [
        PublicationRemoved(1)
    ]
    assert pub.state is PublicationState.REMOVED


@pytest.mark.parametrize("status", [412, 500])
def test_removal_ends_whatever_the_answer(status: int) -> None:
    pub = make()
    published(pub)
    remove = only_request(pub.remove(1.0))
    assert pub.receive_response(answer(remove, status), 2.0) == [PublicationRemoved(1)]


def test_removal_timeout_ends_it() -> None:
    pub = make()
    published(pub)
    only_request(pub.remove(1.0))
    assert pub.transaction_failed("timeout", 33.0) == [PublicationRemoved(1)]


def test_remove_while_sending_waits_for_the_answer() -> None:
    pub = make()
    first = only_request(pub.publish(BODY, 0.0))
    assert pub.remove(1.0) == []
    actions = pub.receive_response(answer(first, 200, SIP_ETag="e1", Expires="3600"), 2.0)
    assert events(actions) == [PublicationConfirmed(1, "e1", 3600)]
    remove = only_request(actions)
    assert remove.expires == 0 and remove.headers.get("SIP-If-Match") == "e1"
    assert pub.receive_response(answer(remove, 200), 3.0) == [PublicationRemoved(1)]


def test_remove_while_sending_then_412_is_removed_at_once() -> None:
    pub = make()
    first = only_request(pub.publish(BODY, 0.0))
    pub.remove(1.0)
    assert pub.receive_response(answer(first, 412), 2.0) == [PublicationRemoved(1)]


def test_remove_while_sending_then_423_does_not_send_an_empty_publish() -> None:
    pub = make(expires=60)
    first = only_request(pub.publish(BODY, 0.0))
    pub.remove(1.0)
    actions = pub.receive_response(answer(first, 423, Min_Expires="300"), 2.0)
    # Nothing was ever published (no entity tag): the removal is complete.
    assert [a for a in actions if isinstance(a, Request)] == []
    assert actions[-1] == PublicationRemoved(1)
    assert pub.state is PublicationState.REMOVED


def test_remove_while_sending_then_failure_with_live_etag_removes() -> None:
    pub = make()
    published(pub, etag="e1")
    modify = only_request(pub.publish(BODY2, 1.0))
    pub.remove(2.0)
    actions = pub.receive_response(answer(modify, 503), 3.0)
    assert isinstance(actions[0], PublicationFailed) and actions[0].retry_at is None
    remove = only_request(actions)
    assert remove.expires == 0 and remove.headers.get("SIP-If-Match") == "e1"


def test_publish_during_removal_revives() -> None:
    pub = make()
    published(pub, etag="e1")
    remove = only_request(pub.remove(1.0))
    assert pub.publish(BODY2, 2.0) == []  # the Expires: 0 is outstanding
    revived = only_request(pub.receive_response(answer(remove, 200), 3.0))
    assert revived.body == BODY2
    assert revived.expires == 3600
    assert "SIP-If-Match" not in revived.headers  # a new publication
    assert pub.state is PublicationState.SENDING
    actions = pub.receive_response(answer(revived, 200, SIP_ETag="n1", Expires="3600"), 4.0)
    assert actions == [PublicationConfirmed(1, "n1", 3600)]


def test_remove_with_no_etag_is_immediate() -> None:
    assert make().remove(0.0) == [PublicationRemoved(1)]
    # After a permanent failure nothing is held at the server either.
    pub = make()
    request = only_request(pub.publish(BODY, 0.0))
    pub.receive_response(answer(request, 489), 0.0)
    assert pub.remove(1.0) == [PublicationRemoved(1)]


def test_remove_while_waiting_to_retry() -> None:
    pub = make()
    published(pub, etag="e1")
    modify = only_request(pub.publish(BODY2, 1.0))
    pub.receive_response(answer(modify, 500), 1.0)
    assert pub.state is PublicationState.RETRY_WAIT
    remove = only_request(pub.remove(1.5))
    assert remove.expires == 0 and remove.headers.get("SIP-If-Match") == "e1"
    assert pub.get_timer() is None


def test_remove_after_expiry_sends_nothing() -> None:
    pub = make()
    published(pub, now=0.0)
    modify = only_request(pub.publish(BODY2, 1.0))
    pub.receive_response(answer(modify, 500), 1.0)
    # The server forgot the entity tag when it expired.
    assert pub.remove(4000.0) == [PublicationRemoved(1)]


def test_a_removed_publication_refuses_use() -> None:
    pub = make()
    pub.remove(0.0)
    with pytest.raises(LocalProtocolError):
        pub.publish(BODY, 1.0)
    with pytest.raises(LocalProtocolError):
        pub.remove(1.0)
    assert pub.handle_timer(1e9) == []
    assert pub.get_timer() is None


def test_restamp_increments_cseq() -> None:
    pub = make()
    request = only_request(pub.publish(BODY, 0.0))
    seq = request.cseq.seq
    assert pub.restamp(request).cseq.seq == seq + 1
    # The next request continues from there.
    pub.receive_response(answer(request, 200, SIP_ETag="e"), 0.0)
    assert only_request(pub.publish(BODY2, 1.0)).cseq.seq == seq + 2


# -- property: any sequence of inputs --------------------------------------------------

STATUSES = [200, 202, 400, 403, 408, 412, 415, 423, 480, 481, 489, 500, 503, 603]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from([BODY, BODY2])),
        st.tuples(st.just("remove"), st.none()),
        st.tuples(st.just("answer"), st.sampled_from(STATUSES)),
        st.tuples(st.just("timeout"), st.none()),
        st.tuples(st.just("timer"), st.none()),
        st.tuples(st.just("advance"), st.floats(0, 5000)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_any_sequence_only_raises_local_errors_for_misuse(script: list[tuple[str, object]]) -> None:
    pub = make(expires=600)
    now = 0.0
    outstanding: Request | None = None

    def run(actions: list[object]) -> None:
        nonlocal outstanding
        requests = [a for a in actions if isinstance(a, Request)]
        assert len(requests) <= 1
        if requests:
            # RFC 3903 §4.1: never a second PUBLISH while one is outstanding.
            assert outstanding is None
            outstanding = requests[0]
            if outstanding.body:
                assert outstanding.content_type == "application/pidf+xml"
            if "SIP-If-Match" not in outstanding.headers:
                # RFC 3903 §4.2: an initial PUBLISH carries the state.
                assert outstanding.body and outstanding.expires
            if outstanding.expires == 0:
                assert not outstanding.body
        for event in events(actions):
            assert isinstance(event, PublicationConfirmed | PublicationFailed | PublicationRemoved)

    for kind, arg in script:
        removed = pub.state is PublicationState.REMOVED
        if kind in ("publish", "remove"):
            try:
                if kind == "publish":
                    assert isinstance(arg, bytes)
                    run(pub.publish(arg, now))
                else:
                    run(pub.remove(now))
            except LocalProtocolError:
                assert removed
            else:
                assert not removed
        elif kind == "answer" and outstanding is not None:
            assert isinstance(arg, int)
            request, outstanding = outstanding, None
            headers = {"Min_Expires": "900"} if arg == 423 else {}
            if 200 <= arg < 300:
                headers = {"SIP_ETag": f"e{now:.0f}", "Expires": "600"}
            run(pub.receive_response(answer(request, arg, **headers), now))
        elif kind == "timeout" and outstanding is not None:
            outstanding = None
            run(pub.transaction_failed("timeout", now))
        elif kind == "timer":
            timer = pub.get_timer()
            if timer is not None:
                now = max(now, timer)
                run(pub.handle_timer(now))
        elif kind == "advance":
            assert isinstance(arg, float)
            now += arg
        if pub.state in (PublicationState.SENDING, PublicationState.REMOVING):
            assert outstanding is not None
            assert pub.get_timer() is None
        else:
            assert outstanding is None
        if pub.state is PublicationState.REMOVED:
            assert pub.get_timer() is None and pub.etag is None


# -- resuming a publication the state agent already holds ---------------------------


def test_a_resumed_publication_modifies_with_the_known_entity_tag() -> None:
    pub = Publication(
        1, AOR, call_id="call-1", local_tag="tag-1", etag="old", etag_expires_at=500.0
    )
    request = only_request(pub.publish(BODY, 10.0))
    assert request.headers.get("SIP-If-Match") == "old"
    assert request.body == BODY  # a modify carries the state (RFC 3903 §4.4)
    actions = pub.receive_response(answer(request, 200, SIP_ETag="new", Expires="3600"), 11.0)
    assert actions == [PublicationConfirmed(1, "new", 3600)]


def test_a_resumed_publication_the_server_forgot_is_published_afresh() -> None:
    pub = Publication(
        1, AOR, call_id="call-1", local_tag="tag-1", etag="old", etag_expires_at=500.0
    )
    request = only_request(pub.publish(BODY, 10.0))
    retry = only_request(pub.receive_response(answer(request, 412), 11.0))
    assert "SIP-If-Match" not in retry.headers
    assert retry.body == BODY


def test_an_expired_entity_tag_is_not_used_to_resume() -> None:
    pub = Publication(
        1, AOR, call_id="call-1", local_tag="tag-1", etag="old", etag_expires_at=5.0
    )
    request = only_request(pub.publish(BODY, 10.0))
    assert "SIP-If-Match" not in request.headers


@pytest.mark.parametrize(
    ("expires", "earliest", "latest"),
    [(3600, 2700.0, 3240.0), (300, 223.0, 268.0), (120, 70.0, 88.0), (60, 30.0, 45.0)],
)
def test_refreshes_are_spread_even_for_short_intervals(
    expires: int, earliest: float, latest: float
) -> None:
    # Objects created together must not refresh together: the spread survives
    # the 32 s guard (Expires 120 used to fold every refresh onto 88 s).
    policy = RefreshPolicy()
    delays = [policy.refresh_delay(expires, i / 100) for i in range(101)]
    assert min(delays) == pytest.approx(earliest)
    assert max(delays) == pytest.approx(latest)
    assert len({round(d, 6) for d in delays}) == len(delays)
    if expires - 32 > expires / 2:
        assert max(delays) <= expires - 32
