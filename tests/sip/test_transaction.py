"""Non-INVITE transactions driven by a manual clock (a float we advance)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.errors import LocalProtocolError, RemoteProtocolError
from sip.message import Headers, Request, Response, parse_message
from sip.transaction import (
    ClientState,
    ClientTransaction,
    ResponseReceived,
    ServerState,
    ServerTransaction,
    TimedOut,
    TransactionAction,
    TransactionTimings,
    Transmit,
    TransportFailed,
    client_key,
    new_branch,
    server_key,
)
from sip.uri import SipURI

TAG = "as83kd9bs"  # the To tag a UAS adds (RFC 3261 §8.2.6.2)


def make_request(
    method: str = "PUBLISH",
    *,
    branch: str | None = "z9hG4bK776asdhds",
    sent_by: str = "127.0.0.1:5080",
    cseq_method: str | None = None,
) -> Request:
    h = Headers()
    via = f"SIP/2.0/UDP {sent_by}"
    if branch is not None:
        via += f";branch={branch}"
    h.add("Via", via)
    h.add("Max-Forwards", "70")
    h.add("From", "<sip:alice@example.com>;tag=1928301774")
    h.add("To", "<sip:alice@example.com>")
    h.add("Call-ID", "a84b4c76e66710")
    h.add("CSeq", f"314159 {cseq_method or method}")
    return Request(method=method, uri=SipURI.parse("sip:alice@example.com"), headers=h, body=b"")


def transmits(actions: list[TransactionAction]) -> list[Transmit]:
    return [a for a in actions if isinstance(a, Transmit)]


def run_client_timers(txn: ClientTransaction, until: float) -> list[tuple[float, str]]:
    """Fire every timer up to ``until``; return (instant, what happened)."""
    log: list[tuple[float, str]] = []
    while (deadline := txn.get_timer()) is not None and deadline <= until:
        for action in txn.handle_timer(deadline):
            if isinstance(action, Transmit):
                assert action.retransmission
                assert action.data == bytes(txn.request)
                log.append((deadline, "retransmit"))
            else:
                log.append((deadline, type(action).__name__))
    return log


# --- client over UDP ----------------------------------------------------------


def test_client_udp_retransmits_on_timer_e_then_times_out_on_f() -> None:
    request = make_request()
    txn = ClientTransaction(request, reliable=False)
    assert txn.state is ClientState.INITIAL
    sent = txn.start(0.0)
    assert sent == [Transmit(request, bytes(request))]
    assert txn.state is ClientState.TRYING

    log = run_client_timers(txn, until=100.0)
    retransmits = [t for t, what in log if what == "retransmit"]
    # T1, then doubling (1, 2, 4 = T2), then every T2.
    assert retransmits == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert log[-1] == (32.0, "TimedOut")
    assert txn.state is ClientState.TERMINATED
    assert txn.get_timer() is None
    assert txn.handle_timer(1000.0) == []


def test_client_timed_out_event_carries_the_request() -> None:
    request = make_request()
    txn = ClientTransaction(request, reliable=True)
    txn.start(0.0)
    assert txn.handle_timer(32.0) == [TimedOut(request)]


def test_client_early_handle_timer_does_nothing() -> None:
    txn = ClientTransaction(make_request(), reliable=False)
    txn.start(10.0)
    assert txn.get_timer() == 10.5
    assert txn.handle_timer(10.49) == []
    assert txn.get_timer() == 10.5


def test_client_proceeding_retransmits_every_t2() -> None:
    txn = ClientTransaction(make_request(), reliable=False)
    txn.start(0.0)
    assert len(transmits(txn.handle_timer(0.5))) == 1  # E: next at 1.5
    trying = txn.request.response(100, to_tag=TAG)
    assert txn.receive_response(trying, 0.7) == [ResponseReceived(trying)]
    assert txn.state is ClientState.PROCEEDING
    log = run_client_timers(txn, until=100.0)
    # The armed E still fires at 1.5; from then on every T2 (§17.1.2.2).
    assert [t for t, what in log if what == "retransmit"] == [
        1.5,
        5.5,
        9.5,
        13.5,
        17.5,
        21.5,
        25.5,
        29.5,
    ]
    assert log[-1] == (32.0, "TimedOut")


def test_client_passes_every_provisional_up() -> None:
    txn = ClientTransaction(make_request(), reliable=False)
    txn.start(0.0)
    r1, r2 = txn.request.response(100, to_tag=TAG), txn.request.response(183, to_tag=TAG)
    assert txn.receive_response(r1, 0.1) == [ResponseReceived(r1)]
    assert txn.receive_response(r2, 0.2) == [ResponseReceived(r2)]
    assert txn.state is ClientState.PROCEEDING


def test_client_final_response_timer_k_absorbs_retransmissions() -> None:
    txn = ClientTransaction(make_request(), reliable=False)
    txn.start(0.0)
    ok = txn.request.response(200, to_tag=TAG)
    assert txn.receive_response(ok, 0.7) == [ResponseReceived(ok)]
    assert txn.state is ClientState.COMPLETED
    assert txn.final_response is ok
    assert txn.get_timer() == pytest.approx(0.7 + 5.0)  # Timer K = T4, E and F gone
    # Retransmitted finals (even a different one) and late 1xx are absorbed.
    assert txn.receive_response(ok, 1.0) == []
    assert txn.receive_response(txn.request.response(500, to_tag=TAG), 2.0) == []
    assert txn.receive_response(txn.request.response(100, to_tag=TAG), 3.0) == []
    assert txn.handle_timer(5.69) == []
    assert txn.state is ClientState.COMPLETED
    assert txn.handle_timer(5.7) == []
    assert txn.state is ClientState.TERMINATED
    assert txn.get_timer() is None
    assert txn.final_response is ok
    assert txn.receive_response(ok, 6.0) == []


def test_client_final_after_proceeding() -> None:
    txn = ClientTransaction(make_request(), reliable=False)
    txn.start(0.0)
    txn.receive_response(txn.request.response(100, to_tag=TAG), 0.1)
    busy = txn.request.response(486, to_tag=TAG)
    assert txn.receive_response(busy, 3.0) == [ResponseReceived(busy)]
    assert txn.state is ClientState.COMPLETED
    assert txn.get_timer() == 8.0
    assert run_client_timers(txn, until=100.0) == []  # no retransmission after the final
    assert txn.state is ClientState.TERMINATED


def test_client_late_timer_call_retransmits_once() -> None:
    txn = ClientTransaction(make_request(), reliable=False)
    txn.start(0.0)
    assert len(transmits(txn.handle_timer(1.2))) == 1  # E was due at 0.5
    assert txn.get_timer() == pytest.approx(2.2)  # re-armed from now with 2*T1


def test_client_timer_f_wins_over_a_due_timer_e() -> None:
    txn = ClientTransaction(make_request(), reliable=False)
    txn.start(0.0)
    assert txn.handle_timer(40.0) == [TimedOut(txn.request)]
    assert txn.state is ClientState.TERMINATED


def test_client_custom_timings() -> None:
    timings = TransactionTimings(t1=0.1, t2=0.4, t4=1.0)
    txn = ClientTransaction(make_request(), reliable=False, timings=timings)
    txn.start(0.0)
    log = run_client_timers(txn, until=100.0)
    expected = [0.1, 0.3, 0.7, 1.1, 1.5, 1.9, 2.3, 2.7, 3.1, 3.5, 3.9, 4.3, 4.7, 5.1, 5.5, 5.9, 6.3]
    assert [t for t, what in log if what == "retransmit"] == pytest.approx(expected)
    assert log[-1] == (pytest.approx(6.4), "TimedOut")


def test_client_transport_error() -> None:
    txn = ClientTransaction(make_request(), reliable=False)
    txn.start(0.0)
    assert txn.transport_failed("ICMP port unreachable", 0.1) == [
        TransportFailed("ICMP port unreachable")
    ]
    assert txn.state is ClientState.TERMINATED
    assert txn.get_timer() is None
    assert txn.transport_failed("again", 0.2) == []


def test_client_transport_error_after_final_is_ignored() -> None:
    txn = ClientTransaction(make_request(), reliable=False)
    txn.start(0.0)
    txn.receive_response(txn.request.response(200, to_tag=TAG), 0.1)
    assert txn.transport_failed("late ICMP", 0.2) == []
    assert txn.state is ClientState.COMPLETED


# --- client over TCP ----------------------------------------------------------


def test_client_tcp_sends_once_and_times_out_at_64_t1() -> None:
    txn = ClientTransaction(make_request(), reliable=True)
    assert len(txn.start(0.0)) == 1
    assert txn.get_timer() == 32.0
    log = run_client_timers(txn, until=100.0)
    assert log == [(32.0, "TimedOut")]
    assert txn.state is ClientState.TERMINATED


def test_client_tcp_final_terminates_at_once() -> None:
    txn = ClientTransaction(make_request(), reliable=True)
    txn.start(0.0)
    ok = txn.request.response(200, to_tag=TAG)
    assert txn.receive_response(ok, 0.3) == [ResponseReceived(ok)]
    assert txn.state is ClientState.TERMINATED  # Timer K is zero
    assert txn.get_timer() is None


# --- client misuse ----------------------------------------------------------------


def test_client_invalid_local_transitions() -> None:
    txn = ClientTransaction(make_request(), reliable=False)
    with pytest.raises(LocalProtocolError):
        txn.receive_response(txn.request.response(200, to_tag=TAG), 0.0)
    with pytest.raises(LocalProtocolError):
        txn.transport_failed("x", 0.0)
    txn.start(0.0)
    with pytest.raises(LocalProtocolError):
        txn.start(0.1)
    assert txn.state is ClientState.TRYING


def test_client_refuses_requests_it_cannot_run() -> None:
    with pytest.raises(LocalProtocolError):
        ClientTransaction(make_request("INVITE"), reliable=False)
    with pytest.raises(LocalProtocolError):
        ClientTransaction(make_request(branch="1234"), reliable=False)  # no magic cookie
    with pytest.raises(LocalProtocolError):
        ClientTransaction(make_request(branch=None), reliable=False)
    with pytest.raises(LocalProtocolError):
        ClientTransaction(make_request("PUBLISH", cseq_method="SUBSCRIBE"), reliable=False)
    with pytest.raises(LocalProtocolError):
        TransactionTimings(t1=5.0, t2=4.0)


def test_client_rejects_out_of_range_status_from_network() -> None:
    txn = ClientTransaction(make_request(), reliable=False)
    txn.start(0.0)
    bogus = Response(
        status=700, reason="Nope", headers=txn.request.response(200, to_tag=TAG).headers
    )
    with pytest.raises(RemoteProtocolError):
        txn.receive_response(bogus, 0.1)
    assert txn.state is ClientState.TRYING


# --- server -------------------------------------------------------------------


def test_server_udp_absorbs_and_resends() -> None:
    request = make_request("NOTIFY")
    txn = ServerTransaction(request, reliable=False)
    assert txn.state is ServerState.TRYING
    # §17.2.2: retransmissions before any response are discarded.
    assert txn.receive_request(request, 0.1) == []
    assert txn.get_timer() is None

    trying = request.response(100, to_tag=TAG)
    assert txn.send_response(trying, 0.2) == [Transmit(trying, bytes(trying))]
    assert txn.state is ServerState.PROCEEDING
    assert txn.receive_request(request, 0.3) == [
        Transmit(trying, bytes(trying), retransmission=True)
    ]

    ok = request.response(200, to_tag=TAG)
    assert txn.send_response(ok, 0.4) == [Transmit(ok, bytes(ok))]
    assert txn.state is ServerState.COMPLETED
    assert txn.last_response is ok
    assert txn.get_timer() == pytest.approx(0.4 + 32.0)  # Timer J = 64*T1
    for t in (1.0, 5.0, 30.0):
        assert txn.receive_request(request, t) == [Transmit(ok, bytes(ok), retransmission=True)]

    assert txn.handle_timer(32.3) == []
    assert txn.state is ServerState.COMPLETED
    assert txn.handle_timer(32.4) == []
    assert txn.state is ServerState.TERMINATED
    assert txn.get_timer() is None
    assert txn.receive_request(request, 33.0) == []


def test_server_final_straight_from_trying() -> None:
    request = make_request("NOTIFY")
    txn = ServerTransaction(request, reliable=False)
    ok = request.response(200, to_tag=TAG)
    assert transmits(txn.send_response(ok, 1.0)) == [Transmit(ok, bytes(ok))]
    assert txn.state is ServerState.COMPLETED
    assert txn.receive_request(request, 2.0) == [Transmit(ok, bytes(ok), retransmission=True)]


def test_server_tcp_terminates_when_final_is_sent() -> None:
    request = make_request("NOTIFY")
    txn = ServerTransaction(request, reliable=True)
    ok = request.response(200, to_tag=TAG)
    assert txn.send_response(ok, 1.0) == [Transmit(ok, bytes(ok))]
    assert txn.state is ServerState.TERMINATED  # Timer J is zero
    assert txn.get_timer() is None


def test_server_transport_errors() -> None:
    request = make_request("NOTIFY")
    txn = ServerTransaction(request, reliable=False)
    with pytest.raises(LocalProtocolError):  # nothing sent yet
        txn.transport_failed("reset", 0.0)
    txn.send_response(request.response(100, to_tag=TAG), 0.1)
    assert txn.transport_failed("reset", 0.2) == [TransportFailed("reset")]
    assert txn.state is ServerState.TERMINATED

    txn = ServerTransaction(request, reliable=False)
    txn.send_response(request.response(200, to_tag=TAG), 0.1)
    assert txn.transport_failed("reset", 0.2) == [TransportFailed("reset")]
    assert txn.state is ServerState.TERMINATED
    assert txn.get_timer() is None
    assert txn.transport_failed("again", 0.3) == []


def test_server_invalid_local_transitions() -> None:
    request = make_request("NOTIFY")
    txn = ServerTransaction(request, reliable=False)
    with pytest.raises(LocalProtocolError):
        txn.send_response(Response(status=99, reason="x", headers=Headers()), 0.0)
    txn.send_response(request.response(200, to_tag=TAG), 0.1)
    with pytest.raises(LocalProtocolError):
        txn.send_response(request.response(500, to_tag=TAG), 0.2)
    with pytest.raises(LocalProtocolError):
        txn.send_response(request.response(100, to_tag=TAG), 0.2)
    assert txn.last_response is not None and txn.last_response.status == 200
    txn.handle_timer(100.0)
    with pytest.raises(LocalProtocolError):
        txn.send_response(request.response(200, to_tag=TAG), 101.0)
    with pytest.raises(LocalProtocolError):
        ServerTransaction(make_request("INVITE"), reliable=False)


def test_server_refuses_unkeyable_requests() -> None:
    with pytest.raises(RemoteProtocolError):
        ServerTransaction(make_request("NOTIFY", branch="rfc2543-style"), reliable=False)
    with pytest.raises(RemoteProtocolError):
        ServerTransaction(make_request("NOTIFY", branch=None), reliable=False)


# --- identity -------------------------------------------------------------------


def test_client_key_matches_request_and_its_responses() -> None:
    request = make_request("SUBSCRIBE")
    assert client_key(request) == ("z9hG4bK776asdhds", "SUBSCRIBE")
    assert client_key(request.response(200, to_tag=TAG)) == client_key(request)
    other_method = make_request("PUBLISH")
    assert client_key(other_method) != client_key(request)


def test_keys_survive_the_wire() -> None:
    request = make_request("SUBSCRIBE")
    txn = ClientTransaction(request, reliable=False)
    (sent,) = txn.start(0.0)
    assert isinstance(sent, Transmit)
    received = parse_message(sent.data)
    assert isinstance(received, Request)
    server = ServerTransaction(received, reliable=False)
    (answer,) = server.send_response(received.response(202, to_tag=TAG), 0.1)
    assert isinstance(answer, Transmit)
    response = parse_message(answer.data)
    assert isinstance(response, Response)
    assert client_key(response) == txn.key
    retransmitted = parse_message(sent.data)
    assert isinstance(retransmitted, Request)
    assert server_key(retransmitted) == server.key
    assert txn.receive_response(response, 0.2) == [ResponseReceived(response)]


def test_server_key() -> None:
    assert server_key(make_request("NOTIFY", sent_by="Proxy.Example.COM:5060")) == (
        "z9hG4bK776asdhds",
        "proxy.example.com:5060",
        "NOTIFY",
    )
    assert server_key(make_request("NOTIFY", sent_by="10.0.0.1"))[1] == "10.0.0.1"
    # §17.2.3: an ACK matches the INVITE transaction it acknowledges.
    assert server_key(make_request("ACK"))[2] == "INVITE"
    # Same branch from another sender is another transaction.
    assert server_key(make_request("NOTIFY", sent_by="10.0.0.2")) != server_key(
        make_request("NOTIFY", sent_by="10.0.0.1")
    )


def test_keys_need_a_magic_cookie_branch() -> None:
    for branch in (None, "abc", "z9hG4bK", "Z9HG4BKabc"):
        with pytest.raises(RemoteProtocolError):
            server_key(make_request("NOTIFY", branch=branch))
        with pytest.raises(RemoteProtocolError):
            client_key(make_request("NOTIFY", branch=branch))


def test_key_of_message_without_via() -> None:
    request = make_request("NOTIFY")
    request.headers.remove("Via")
    with pytest.raises(RemoteProtocolError):
        server_key(request)


@settings(max_examples=200, deadline=None)
@given(
    via=st.text(st.sampled_from(list("SIP/2.0UDP 1.:;=branchz9G4bK[]\t,x")), max_size=40),
    cseq=st.text(st.sampled_from(list("0123456789 NOTIFYx\t-")), max_size=15),
)
def test_keys_of_garbage_raise_only_remote_errors(via: str, cseq: str) -> None:
    request = make_request("NOTIFY")
    request.headers.set("Via", via)
    request.headers.set("CSeq", cseq)
    for key in (client_key, server_key):
        try:
            branch = key(request)[0]
        except RemoteProtocolError:
            continue
        assert branch.startswith("z9hG4bK") and len(branch) > 7


def test_new_branch() -> None:
    assert new_branch("a1b2c3") == "z9hG4bKa1b2c3"
    for bad in ("", "has space", 'quo"te', "semi;colon"):
        with pytest.raises(LocalProtocolError):
            new_branch(bad)


def test_client_key_given_by_the_sender_is_kept_unread() -> None:
    # The user agent writes the branch and the CSeq itself and passes the
    # key; the texts are not read back (RFC 3261 §17.1.3 keys on both).
    request = make_request(branch=None)  # a Via the texts could not key
    txn = ClientTransaction(request, reliable=False, key=("z9hG4bKgiven", "PUBLISH"))
    assert txn.key == ("z9hG4bKgiven", "PUBLISH")
    with pytest.raises(LocalProtocolError):
        ClientTransaction(make_request(), reliable=False, key=("z9hG4bKgiven", "SUBSCRIBE"))
