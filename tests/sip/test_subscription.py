"""RFC 6665 subscriptions (subscriber side) driven by a manual clock."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.errors import LocalProtocolError, RemoteProtocolError
from sip.message import Headers, Request, Response
from sip.publication import RefreshPolicy
from sip.subscription import (
    MAX_MISSING,
    NotifyReceived,
    Subscription,
    SubscriptionAccepted,
    SubscriptionPhase,
    SubscriptionTerminated,
)
from sip.uri import SipURI

WATCHER = SipURI.parse("sip:bob@example.com")
TARGET = SipURI.parse("sip:alice@example.com")
NOTIFIER = "sip:presence@10.0.0.9:5070"
PIDF = b"<presence/>"
TIMER_N = 32.0


def make(*, expires: int = 3600, spread: float = 0.0) -> Subscription:
    return Subscription(
        7,
        WATCHER,
        TARGET,
        call_id="call-7",
        local_tag="ltag",
        expires=expires,
        spread=spread,
        timer_n=TIMER_N,
    )


def answer(request: Request, status: int, **headers: str) -> Response:
    response = request.response(status, to_tag="rtag")
    for name, value in headers.items():
        response.headers.add(name.replace("_", "-"), value)
    return response


def notify(
    state: str,
    cseq: int = 1,
    *,
    body: bytes = b"",
    contact: str | None = f"<{NOTIFIER}>",
    record_routes: tuple[str, ...] = (),
    event: str = "presence",
) -> Request:
    h = Headers()
    for route in record_routes:
        h.add("Record-Route", route)
    h.add("From", f"<{TARGET}>;tag=rtag")
    h.add("To", f"<{WATCHER}>;tag=ltag")
    h.add("Call-ID", "call-7")
    h.add("CSeq", f"{cseq} NOTIFY")
    h.add("Event", event)
    if state:
        h.add("Subscription-State", state)
    if contact is not None:
        h.add("Contact", contact)
    if body:
        h.add("Content-Type", "application/pidf+xml")
    return Request("NOTIFY", WATCHER, h, body)


def only_request(actions: list[object]) -> Request:
    requests = [a for a in actions if isinstance(a, Request)]
    assert len(requests) == 1, actions
    return requests[0]


def events(actions: list[object]) -> list[object]:
    return [a for a in actions if not isinstance(a, Request)]


def started(sub: Subscription, now: float = 0.0) -> Request:
    return only_request(sub.start(now))


def active(sub: Subscription, now: float = 0.0, expires: int = 3600) -> Request:
    """Start and establish: 2xx, then NOTIFY active.  Returns the SUBSCRIBE."""
    request = started(sub, now)
    sub.receive_response(
        answer(request, 200, Expires=str(expires), Contact=f"<{NOTIFIER}>"), now
    )
    status, _ = sub.receive_notify(notify(f"active;expires={expires}", body=PIDF), now)
    assert status == 200
    assert sub.state is SubscriptionPhase.ACTIVE
    return request


# -- initial SUBSCRIBE and the dialog --------------------------------------------


def test_initial_subscribe_shape() -> None:
    sub = make()
    request = started(sub)
    assert request.method == "SUBSCRIBE"
    assert request.uri == TARGET
    assert request.event is not None and request.event.package == "presence"
    assert request.expires == 3600
    assert request.headers.get("Accept") == "application/pidf+xml"
    assert request.from_.uri == WATCHER and request.from_.tag == "ltag"
    assert request.to.uri == TARGET and request.to.tag is None
    assert request.call_id == "call-7"
    assert request.cseq.seq == 1 and request.cseq.method == "SUBSCRIBE"
    assert "Route" not in request.headers
    assert request.body == b""
    with pytest.raises(LocalProtocolError):
        sub.start(1.0)


def test_2xx_then_notify_pending_active_terminated() -> None:
    sub = make()
    request = started(sub)
    actions = sub.receive_response(
        answer(request, 200, Expires="1800", Contact=f"<{NOTIFIER}>"), 0.5
    )
    assert actions == [SubscriptionAccepted(7, 1800)]
    assert sub.remote_tag == "rtag"
    assert str(sub.remote_target) == NOTIFIER

    status, actions = sub.receive_notify(notify("pending;expires=1800", 1), 0.6)
    assert status == 200
    (received,) = actions
    assert isinstance(received, NotifyReceived)
    assert received.subscription_id == 7 and received.state.state == "pending"
    assert received.body == b""
    assert sub.state is SubscriptionPhase.PENDING

    status, actions = sub.receive_notify(notify("active;expires=1700", 2, body=PIDF), 5.0)
    assert status == 200
    (received,) = actions
    assert isinstance(received, NotifyReceived)
    assert received.body == PIDF and received.content_type == "application/pidf+xml"
    assert sub.state is SubscriptionPhase.ACTIVE

    status, actions = sub.receive_notify(notify("terminated;reason=deactivated", 3), 6.0)
    assert status == 200
    assert isinstance(actions[0], NotifyReceived)
    assert actions[1:] == [SubscriptionTerminated(7, "deactivated")]
    assert sub.terminated
    assert sub.get_timer() is None
    # Anything later for this dialog is answered 481 by the user agent.
    assert sub.receive_notify(notify("active", 4), 7.0) == (481, [])


def test_notify_before_2xx_creates_the_dialog() -> None:
    sub = make()
    request = started(sub)
    rr = ("<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>")
    status, actions = sub.receive_notify(
        notify("active;expires=3600", body=PIDF, record_routes=rr), 0.1
    )
    assert status == 200 and isinstance(actions[0], NotifyReceived)
    assert sub.remote_tag == "rtag"
    assert str(sub.remote_target) == NOTIFIER
    # RFC 3261 §12.1.1: as UAS, the route set is the Record-Route in order.
    assert [str(r.uri) for r in sub.route_set] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert sub.state is SubscriptionPhase.ACTIVE

    # The late 2xx (with other Record-Route and Contact) does not rebuild it.
    late = answer(request, 200, Expires="3600", Contact="<sip:other@10.9.9.9>")
    late.headers.add("Record-Route", "<sip:p9.example.com;lr>")
    actions = sub.receive_response(late, 0.2)
    assert actions == [SubscriptionAccepted(7, 3600)]
    assert sub.remote_tag == "rtag"
    assert str(sub.remote_target) == NOTIFIER
    assert len(sub.route_set) == 2
    assert sub.state is SubscriptionPhase.ACTIVE


def test_2xx_builds_the_route_set_reversed() -> None:
    sub = make()
    request = started(sub)
    response = answer(request, 200, Expires="3600", Contact=f"<{NOTIFIER}>")
    response.headers.add("Record-Route", "<sip:p1.example.com;lr>")
    response.headers.add("Record-Route", "<sip:p2.example.com;lr>")
    sub.receive_response(response, 0.0)
    # RFC 3261 §12.1.2: as UAC, the Record-Route in reverse order.
    assert [r.uri.host for r in sub.route_set] == ["p2.example.com", "p1.example.com"]


def test_timer_n_fires_when_no_notify_comes() -> None:
    sub = make()
    request = started(sub, 10.0)
    sub.receive_response(answer(request, 200, Expires="3600"), 10.5)
    assert sub.get_timer() == 10.0 + TIMER_N
    assert sub.handle_timer(10.0 + TIMER_N - 0.1) == []
    assert sub.handle_timer(10.0 + TIMER_N) == [SubscriptionTerminated(7, "timeout")]
    assert sub.terminated and sub.get_timer() is None


def test_a_notify_stops_timer_n() -> None:
    sub = make()
    active(sub, 0.0, expires=3600)
    timer = sub.get_timer()
    assert timer is not None and timer > TIMER_N


def test_initial_failure_terminates_with_status_and_retry_after() -> None:
    sub = make()
    request = started(sub)
    actions = sub.receive_response(answer(request, 503, Retry_After="60"), 0.0)
    assert actions == [SubscriptionTerminated(7, "failed", 503, 60)]
    assert sub.get_timer() is None


def test_initial_423_retries_with_min_expires() -> None:
    sub = make(expires=60)
    request = started(sub)
    retry = only_request(sub.receive_response(answer(request, 423, Min_Expires="600"), 0.0))
    assert retry.expires == 600
    assert retry.cseq.seq == 2
    assert retry.to.tag is None


def test_initial_timeout_terminates() -> None:
    sub = make()
    started(sub)
    assert sub.transaction_failed("timeout", 32.0) == [SubscriptionTerminated(7, "timeout")]


# -- refresh ----------------------------------------------------------------------


def test_subscription_state_expires_rearms_the_refresh() -> None:
    sub = make()
    active(sub, 0.0, expires=3600)
    sub.receive_notify(notify("active;expires=600", 2), 100.0)
    assert sub.expires_at == 700.0
    timer = sub.get_timer()
    assert timer is not None
    assert 100.0 + 0.75 * 600 <= timer <= 100.0 + 600 - 32


def test_refresh_goes_in_dialog() -> None:
    sub = make()
    request = started(sub)
    response = answer(request, 200, Expires="600", Contact=f"<{NOTIFIER}>")
    response.headers.add("Record-Route", "<sip:p1.example.com;lr>")
    sub.receive_response(response, 0.0)
    sub.receive_notify(notify("active;expires=600", contact=None), 0.0)
    timer = sub.get_timer()
    assert timer is not None and 450.0 <= timer <= 568.0
    assert sub.handle_timer(timer - 0.5) == []
    refresh = only_request(sub.handle_timer(timer))
    # RFC 3261 §12.2.1.1: Request-URI = remote target, To tag, Route set.
    assert str(refresh.uri) == NOTIFIER
    assert refresh.to.tag == "rtag" and refresh.from_.tag == "ltag"
    assert refresh.headers.get_all("Route") == ["<sip:p1.example.com;lr>"]
    assert refresh.cseq.seq == request.cseq.seq + 1
    assert refresh.call_id == request.call_id
    assert refresh.expires == 3600  # what we want, whatever was granted last time
    actions = sub.receive_response(answer(refresh, 200, Expires="600"), timer + 0.1)
    assert actions == []  # SubscriptionAccepted is for the initial SUBSCRIBE only
    assert sub.expires_at == timer + 0.1 + 600


def test_subscriptions_granted_a_moment_apart_refresh_together_on_the_grid() -> None:
    timers = []
    for i, granted in enumerate((40.1, 40.7)):
        sub = Subscription(i, WATCHER, TARGET, call_id=f"call-{i}", local_tag="ltag",
                           spread=0.5, timer_n=TIMER_N, policy=RefreshPolicy(grid=1.0))
        request = started(sub, granted)
        sub.receive_response(answer(request, 200, Expires="600", Contact=f"<{NOTIFIER}>"),
                             granted)
        sub.receive_notify(notify("active;expires=600", body=PIDF), granted + 0.01)
        timers.append(sub.get_timer())
        assert only_request(sub.handle_timer(timers[-1])).to.tag == "rtag"
    assert timers[0] == timers[1] == int(timers[0])


def test_in_dialog_subscribes_carry_the_fields_the_initial_one_was_checked_with() -> None:
    sub = make()
    request = started(sub)
    with pytest.raises(LocalProtocolError):
        bad = Subscription(8, WATCHER, TARGET, call_id="c", local_tag="t", event="a\r\nb: c")
        bad.start(0.0)
    sub.receive_response(answer(request, 200, Expires="600", Contact=f"<{NOTIFIER}>"), 0.0)
    sub.receive_notify(notify("active;expires=600", body=PIDF), 0.0)
    refresh = only_request(sub.refresh(1.0))
    checked = Headers((name, value) for name, value in refresh.headers)
    assert refresh.headers == checked
    assert [name for name, _ in refresh.headers] == [name for name, _ in request.headers]


def test_notify_contact_updates_the_remote_target() -> None:
    sub = make()
    active(sub)
    sub.receive_notify(notify("active", 2, contact="<sip:moved@10.0.0.10:5070>"), 1.0)
    timer = sub.get_timer()
    assert timer is not None
    refresh = only_request(sub.handle_timer(timer))
    assert str(refresh.uri) == "sip:moved@10.0.0.10:5070"


def test_refresh_481_means_the_dialog_is_gone() -> None:
    sub = make()
    active(sub)
    timer = sub.get_timer()
    assert timer is not None
    refresh = only_request(sub.handle_timer(timer))
    actions = sub.receive_response(answer(refresh, 481), timer)
    assert actions == [SubscriptionTerminated(7, "dialog-gone", 481)]


@pytest.mark.parametrize("status", [405, 489])
def test_refresh_405_489_end_it(status: int) -> None:
    sub = make()
    active(sub)
    timer = sub.get_timer()
    assert timer is not None
    refresh = only_request(sub.handle_timer(timer))
    assert sub.receive_response(answer(refresh, status), timer) == [
        SubscriptionTerminated(7, "failed", status)
    ]


def test_refresh_500_keeps_it_until_expiry() -> None:
    sub = make()
    active(sub, 0.0, expires=3600)
    timer = sub.get_timer()
    assert timer is not None
    refresh = only_request(sub.handle_timer(timer))
    # RFC 6665 §4.1.2.2: still valid for the most recently known Expires.
    assert sub.receive_response(answer(refresh, 500), timer) == []
    assert not sub.terminated
    assert sub.get_timer() == 3600.0
    status, _ = sub.receive_notify(notify("active", 2), 3000.0)
    assert status == 200
    assert sub.handle_timer(3599.0) == []
    assert sub.handle_timer(3600.0) == [SubscriptionTerminated(7, "timeout")]


def test_refresh_timeout_ends_it() -> None:
    sub = make()
    active(sub)
    timer = sub.get_timer()
    assert timer is not None
    only_request(sub.handle_timer(timer))
    assert sub.transaction_failed("timeout", timer + 32) == [SubscriptionTerminated(7, "timeout")]


# -- NOTIFY validation ------------------------------------------------------------


def test_out_of_order_notify_is_refused_with_500() -> None:
    sub = make()
    active(sub)
    assert sub.receive_notify(notify("active", 5), 1.0)[0] == 200
    # RFC 3261 §12.2.2: a lower CSeq is out of order.
    assert sub.receive_notify(notify("terminated", 4), 2.0) == (500, [])
    assert not sub.terminated


def test_a_notify_skipped_for_good_refreshes_after_timer_n() -> None:
    # RFC 3261 §12.2.1.1: the notifier's CSeq grows by one per NOTIFY.  3
    # never came: its transaction ends unanswered at the notifier, which may
    # drop the dialog on that (tests/data/overload/README.md): ask it.
    sub = make()
    active(sub)  # CSeq 1
    regular = sub.get_timer()
    assert sub.receive_notify(notify("active", 2), 10.0)[0] == 200
    assert sub.receive_notify(notify("active", 4), 11.0)[0] == 200
    assert sub.get_timer() == 11.0 + TIMER_N
    check = only_request(sub.handle_timer(11.0 + TIMER_N))
    assert check.method == "SUBSCRIBE" and check.to.tag == "rtag"
    assert sub.get_timer() == regular  # the regular refresh stays armed
    assert sub.receive_response(answer(check, 481), 44.0) == [
        SubscriptionTerminated(7, "dialog-gone", 481)
    ]


def test_a_skipped_notify_that_comes_late_asks_nothing() -> None:
    sub = make()
    active(sub)
    regular = sub.get_timer()
    assert sub.receive_notify(notify("active", 4), 1.0)[0] == 200
    # Late, not lost: refused as out of order, and the notifier has its answer.
    assert sub.receive_notify(notify("active", 2), 2.0) == (500, [])
    assert sub.get_timer() == 1.0 + TIMER_N
    assert sub.receive_notify(notify("active", 3), 3.0) == (500, [])
    assert sub.get_timer() == regular
    assert sub.handle_timer(1.0 + TIMER_N) == []


def test_a_check_failing_otherwise_than_481_keeps_the_subscription() -> None:
    sub = make()
    active(sub)
    regular = sub.get_timer()
    assert sub.receive_notify(notify("active", 3), 1.0)[0] == 200
    check = only_request(sub.handle_timer(1.0 + TIMER_N))
    assert sub.receive_response(answer(check, 500), 34.0) == []
    assert not sub.terminated and sub.get_timer() == regular


def test_a_wide_gap_is_checked_even_when_the_listed_part_comes() -> None:
    sub = make()
    active(sub)
    assert sub.receive_notify(notify("active", 2 + MAX_MISSING + 5), 1.0)[0] == 200
    for late in range(2, 2 + MAX_MISSING):
        assert sub.receive_notify(notify("active", late), 2.0)[0] == 500
    only_request(sub.handle_timer(1.0 + TIMER_N))


def test_answered_late_refreshes_at_once_unless_a_subscribe_is_under_way() -> None:
    sub = make()
    active(sub)
    check = only_request(sub.answered_late(5.0))
    assert check.method == "SUBSCRIBE"
    assert sub.answered_late(6.0) == []  # that one will tell
    sub.receive_response(answer(check, 200, Expires="3600"), 6.0)
    assert not sub.terminated


def test_notify_without_subscription_state_is_refused_with_400() -> None:
    sub = make()
    started(sub)
    assert sub.receive_notify(notify(""), 0.0) == (400, [])
    # It created no dialog.
    assert sub.remote_tag is None


def test_malformed_notify_headers_leave_the_subscription_untouched() -> None:
    sub = make()
    started(sub)
    for bad in (
        notify("active", contact="<sip:broken"),
        notify("active", contact="<tel:+123>"),  # a remote target must be SIP
        notify("active", record_routes=("<sip:p1;lr",)),
    ):
        with pytest.raises(RemoteProtocolError):
            sub.receive_notify(bad, 0.1)
        assert sub.remote_tag is None and sub.remote_target is None
        assert sub.route_set == ()
    # A good NOTIFY with the same CSeq is still in order.
    assert sub.receive_notify(notify("active"), 0.2)[0] == 200


def test_malformed_2xx_headers_leave_the_subscription_untouched() -> None:
    sub = make()
    request = started(sub)
    with pytest.raises(RemoteProtocolError):
        sub.receive_response(answer(request, 200, Expires="3600", Contact="<sip:x"), 0.1)
    assert sub.remote_tag is None
    with pytest.raises(RemoteProtocolError):
        sub.receive_response(answer(request, 200, Expires="soon"), 0.1)
    assert sub.remote_tag is None and sub.expires_at is None


def test_terminated_rejected_surfaces_reason() -> None:
    sub = make()
    active(sub)
    _, actions = sub.receive_notify(notify("terminated;reason=rejected", 2), 1.0)
    assert actions[-1] == SubscriptionTerminated(7, "rejected")


def test_terminated_probation_surfaces_retry_after() -> None:
    sub = make()
    active(sub)
    _, actions = sub.receive_notify(notify("terminated;reason=probation;retry-after=30", 2), 1.0)
    assert actions[-1] == SubscriptionTerminated(7, "probation", None, 30)


def test_terminated_without_reason() -> None:
    sub = make()
    active(sub)
    _, actions = sub.receive_notify(notify("terminated", 2), 1.0)
    assert actions[-1] == SubscriptionTerminated(7, "unknown")


# -- unsubscribe ----------------------------------------------------------------------


def test_unsubscribe_in_dialog_then_final_notify() -> None:
    sub = make()
    request = active(sub)
    unsub = only_request(sub.unsubscribe(10.0))
    assert unsub.expires == 0
    assert unsub.to.tag == "rtag"
    assert str(unsub.uri) == NOTIFIER
    assert unsub.cseq.seq == request.cseq.seq + 1
    assert sub.state is SubscriptionPhase.UNSUBSCRIBING
    assert sub.unsubscribe(10.5) == []  # already under way
    assert sub.receive_response(answer(unsub, 200, Expires="0"), 10.1) == []
    status, actions = sub.receive_notify(notify("terminated;reason=timeout", 2), 10.2)
    assert status == 200
    assert isinstance(actions[0], NotifyReceived)
    # The caller asked: the notifier's reason does not matter.
    assert actions[1:] == [SubscriptionTerminated(7, "unsubscribed")]
    assert sub.get_timer() is None


def test_unsubscribe_before_the_2xx_waits_for_the_dialog() -> None:
    sub = make()
    request = started(sub)
    assert sub.unsubscribe(0.1) == []
    ok = answer(request, 200, Expires="3600", Contact=f"<{NOTIFIER}>")
    actions = sub.receive_response(ok, 0.2)
    unsub = only_request(actions)
    assert events(actions) == [SubscriptionAccepted(7, 3600)]
    assert unsub.expires == 0 and unsub.to.tag == "rtag"
    assert sub.state is SubscriptionPhase.UNSUBSCRIBING


def test_unsubscribe_before_the_2xx_after_an_early_notify() -> None:
    sub = make()
    request = started(sub)
    sub.receive_notify(notify("pending"), 0.1)
    # The dialog exists, but the initial SUBSCRIBE is still outstanding.
    assert sub.unsubscribe(0.2) == []
    unsub = only_request(sub.receive_response(answer(request, 200, Expires="3600"), 0.3))
    assert unsub.expires == 0 and unsub.to.tag == "rtag"


def test_unsubscribe_before_a_failed_2xx() -> None:
    sub = make()
    request = started(sub)
    sub.unsubscribe(0.1)
    actions = sub.receive_response(answer(request, 404), 0.2)
    assert actions == [SubscriptionTerminated(7, "failed", 404)]


def test_unsubscribe_while_refreshing_sends_expires_0_after_the_answer() -> None:
    sub = make()
    active(sub)
    timer = sub.get_timer()
    assert timer is not None
    refresh = only_request(sub.handle_timer(timer))
    assert sub.unsubscribe(timer + 0.1) == []
    unsub = only_request(sub.receive_response(answer(refresh, 200, Expires="3600"), timer + 0.2))
    assert unsub.expires == 0


def test_unsubscribe_while_a_refresh_fails_still_unsubscribes() -> None:
    sub = make()
    active(sub)
    timer = sub.get_timer()
    assert timer is not None
    refresh = only_request(sub.handle_timer(timer))
    sub.unsubscribe(timer + 0.1)
    # The refresh failed, but the subscription is still alive at the notifier.
    unsub = only_request(sub.receive_response(answer(refresh, 500), timer + 0.2))
    assert unsub.expires == 0


def test_guard_timer_ends_an_unsubscribe_without_final_notify() -> None:
    sub = make()
    active(sub, 0.0, expires=3600)
    unsub = only_request(sub.unsubscribe(100.0))
    sub.receive_response(answer(unsub, 200, Expires="0"), 100.1)
    assert sub.get_timer() == 100.0 + TIMER_N
    assert sub.handle_timer(100.0 + TIMER_N) == [SubscriptionTerminated(7, "unsubscribed")]


def test_unsubscribe_before_any_notify_ends_unsubscribed() -> None:
    # Timer N is still running from the initial SUBSCRIBE; the caller asked
    # to end it, so that is what the end says.
    sub = make()
    request = started(sub, 0.0)
    sub.unsubscribe(0.1)
    unsub = only_request(sub.receive_response(answer(request, 200, Expires="3600"), 0.2))
    sub.receive_response(answer(unsub, 200, Expires="0"), 0.3)
    timer = sub.get_timer()
    assert timer is not None
    assert sub.handle_timer(timer) == [SubscriptionTerminated(7, "unsubscribed")]


def test_a_grant_of_zero_seconds_ends_after_the_guard() -> None:
    sub = make()
    request = started(sub, 0.0)
    sub.receive_notify(notify("active"), 0.1)
    assert sub.receive_response(answer(request, 200, Expires="0"), 0.2) == [
        SubscriptionAccepted(7, 0)
    ]
    assert sub.get_timer() == 0.2 + TIMER_N
    assert sub.handle_timer(0.2 + TIMER_N) == [SubscriptionTerminated(7, "timeout")]


def test_unsubscribe_answered_with_an_error_ends_it() -> None:
    sub = make()
    active(sub)
    unsub = only_request(sub.unsubscribe(1.0))
    assert sub.receive_response(answer(unsub, 481), 1.1) == [
        SubscriptionTerminated(7, "unsubscribed")
    ]


def test_unsubscribe_timeout_ends_it() -> None:
    sub = make()
    active(sub)
    only_request(sub.unsubscribe(1.0))
    assert sub.transaction_failed("timeout", 33.0) == [SubscriptionTerminated(7, "unsubscribed")]


def test_unsubscribe_of_an_unstarted_or_ended_subscription() -> None:
    sub = make()
    assert sub.unsubscribe(0.0) == [SubscriptionTerminated(7, "unsubscribed")]
    assert sub.unsubscribe(1.0) == []


def test_restamp_increments_cseq() -> None:
    sub = make()
    request = started(sub)
    assert sub.restamp(request).cseq.seq == 2
    sub.receive_response(answer(request, 200, Expires="3600"), 0.0)
    assert only_request(sub.unsubscribe(1.0)).cseq.seq == 3


# -- property: any sequence of inputs ----------------------------------------------------

STATUSES = [200, 202, 400, 403, 405, 408, 423, 481, 489, 500, 503]
STATES = [
    "active;expires=600",
    "pending;expires=300",
    "active",
    "terminated;reason=rejected",
    "terminated;reason=probation;retry-after=5",
    "terminated",
    "",
]

steps = st.lists(
    st.one_of(
        st.tuples(st.just("answer"), st.sampled_from(STATUSES)),
        st.tuples(st.just("notify"), st.tuples(st.sampled_from(STATES), st.integers(1, 6))),
        st.tuples(st.just("timeout"), st.none()),
        st.tuples(st.just("timer"), st.none()),
        st.tuples(st.just("unsubscribe"), st.none()),
        st.tuples(st.just("start"), st.none()),
        st.tuples(st.just("advance"), st.floats(0, 1000)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_any_sequence_terminates_at_most_once(script: list[tuple[str, object]]) -> None:
    sub = make(expires=600)
    now = 0.0
    started_ = False
    outstanding: list[Request] = []
    terminations = 0

    def run(actions: list[object]) -> None:
        nonlocal terminations
        for action in actions:
            if isinstance(action, Request):
                # One SUBSCRIBE transaction at a time in the dialog.
                assert not outstanding
                outstanding.append(action)
                if action.expires == 0 or sub.remote_tag is not None:
                    assert action.to.tag == sub.remote_tag
            elif isinstance(action, SubscriptionTerminated):
                terminations += 1
            else:
                assert isinstance(action, NotifyReceived | SubscriptionAccepted)

    for kind, arg in script:
        if kind == "start":
            misuse = started_ or sub.terminated
            try:
                run(sub.start(now))
            except LocalProtocolError:
                assert misuse
            else:
                assert not misuse
            started_ = True
        elif kind == "answer" and outstanding:
            assert isinstance(arg, int)
            request = outstanding.pop()
            headers = {"Min_Expires": "900"} if arg == 423 else {}
            if arg < 300:
                headers = {"Expires": str(request.expires), "Contact": f"<{NOTIFIER}>"}
            run(sub.receive_response(answer(request, arg, **headers), now))
        elif kind == "timeout" and outstanding:
            outstanding.pop()
            run(sub.transaction_failed("timeout", now))
        elif kind == "notify" and started_:
            assert isinstance(arg, tuple)
            state, cseq = arg
            status, actions = sub.receive_notify(notify(state, cseq), now)
            assert status in (200, 400, 481, 500)
            run(actions)
        elif kind == "unsubscribe":
            run(sub.unsubscribe(now))
        elif kind == "timer":
            timer = sub.get_timer()
            if timer is not None:
                now = max(now, timer)
                run(sub.handle_timer(now))
        elif kind == "advance":
            assert isinstance(arg, float)
            now += arg
        assert terminations <= 1
        if sub.terminated:
            assert terminations == 1 and sub.get_timer() is None


# -- a refused initial SUBSCRIBE is tried again (RFC 3261 §21.5.1, §21.5.4) -------------


def _only_request(actions: list[object]) -> Request:
    (request,) = [a for a in actions if isinstance(a, Request)]
    return request


def test_an_initial_500_is_retried_shortly_with_the_next_cseq() -> None:
    sub = make(spread=0.3)
    first = _only_request(sub.start(0.0))
    assert sub.receive_response(answer(first, 500), 0.0) == []
    retry_at = sub.get_timer()
    assert retry_at is not None and 0.2 <= retry_at < 0.4
    assert sub.handle_timer(retry_at - 0.01) == []
    retry = _only_request(sub.handle_timer(retry_at))
    assert retry.cseq.seq == first.cseq.seq + 1
    assert retry.call_id == first.call_id and retry.to.tag is None
    actions = sub.receive_response(answer(retry, 200, Expires="600"), retry_at)
    assert actions == [SubscriptionAccepted(7, 600)]


def test_an_initial_500_fails_after_three_retries() -> None:
    sub = make(spread=0.7)
    request = _only_request(sub.start(0.0))
    now = 0.0
    for delay in (0.2, 0.4, 0.8):
        assert sub.receive_response(answer(request, 500), now) == []
        retry_at = sub.get_timer()
        assert retry_at is not None and delay <= retry_at - now < 2 * delay
        now = retry_at
        request = _only_request(sub.handle_timer(now))
    actions = sub.receive_response(answer(request, 500), now)
    assert actions == [SubscriptionTerminated(7, "failed", 500, None)]


def test_an_initial_503_waits_for_retry_after_unless_it_is_long() -> None:
    sub = make()
    request = _only_request(sub.start(0.0))
    assert sub.receive_response(answer(request, 503, Retry_After="5"), 0.0) == []
    assert sub.get_timer() == 5.0
    request = _only_request(sub.handle_timer(5.0))
    actions = sub.receive_response(answer(request, 503, Retry_After="120"), 5.0)
    assert actions == [SubscriptionTerminated(7, "failed", 503, 120)]


def test_a_refused_initial_subscribe_with_a_client_error_is_not_retried() -> None:
    sub = make()
    request = _only_request(sub.start(0.0))
    actions = sub.receive_response(answer(request, 403), 0.0)
    assert actions == [SubscriptionTerminated(7, "failed", 403, None)]


def test_unsubscribing_while_waiting_to_retry_ends_at_once() -> None:
    sub = make()
    request = _only_request(sub.start(0.0))
    sub.receive_response(answer(request, 500), 0.0)
    assert sub.unsubscribe(0.1) == [SubscriptionTerminated(7, "unsubscribed")]
    assert sub.get_timer() is None
