import contextlib
from collections.abc import AsyncIterator

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from adapter.admission import TokenBucket
from adapter.app import create_app
from adapter.auth import Accounts
from adapter.config import Config, RateLimit


def test_a_bucket_gives_its_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # one token every 0.5 s
    assert bucket.take(100.25) == pytest.approx(0.25)
    assert bucket.take(100.5) == 0.0
    assert bucket.take(100.5) == pytest.approx(0.5)


def test_a_bucket_never_holds_more_than_its_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2, now=0.0)
    assert [bucket.take(3600.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


def test_a_clock_going_back_adds_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) == pytest.approx(1.0)


@pytest.fixture
def app_config(tmp_path) -> Config:
    from adapter.config import load_config

    path = tmp_path / "adapter.toml"
    path.write_text(
        '[http]\nhost = "127.0.0.1"\nport = 8080\n'
        '[sip]\nserver = "sip:127.0.0.1:5070"\nlisten = "127.0.0.1:5080"\ntransport = "udp"\n'
        '[xcap]\nroot = "http://127.0.0.1:5070/xcap-root"\n[store]\npath = "s"\n'
        "[limits]\nrequests_per_second = 0.001\nburst = 2\n"
        '[[accounts]]\nid = "flood-app"\npassword = "f"\naddresses = ["sip:f@example.com"]\n'
        '[[accounts]]\nid = "quiet-app"\npassword = "q"\naddresses = ["sip:q@example.com"]\n'
    )
    return load_config(path, cwd=tmp_path)


class Probe:
    async def ping(self) -> float:
        return 0.001


def client(config: Config) -> TestClient:
    async def whoami(request: Request) -> JSONResponse:
        caller = request.state.accounts.authenticate(request)
        return JSONResponse({"id": caller.account.id})

    @contextlib.asynccontextmanager
    async def lifespan(app) -> AsyncIterator[dict[str, object]]:
        yield {"accounts": Accounts(config.accounts)}

    app = create_app(
        config,
        sip_probe=Probe(),
        routes=[Route("/rest/presence/whoami", whoami), Route("/cometd/whoami", whoami)],
        lifespan=lifespan,
    )
    return TestClient(app, raise_server_exceptions=False)


def test_each_application_has_its_own_bucket(app_config: Config) -> None:
    assert app_config.limits == RateLimit(requests_per_second=0.001, burst=2)
    with client(app_config) as http:
        flood = [http.get("/rest/presence/whoami", auth=("flood-app", "f")) for _ in range(4)]
        assert [r.status_code for r in flood] == [200, 200, 429, 429]
        refused = flood[2]
        assert refused.json() == {"requestError": {"policyException": {
            "messageId": "POL0001", "text": "A policy error occurred. Error code is %1",
            "variables": ["request rate limit exceeded"],
        }}}
        assert int(refused.headers["Retry-After"]) >= 999  # one token takes 1000 s
        quiet = [http.get("/rest/presence/whoami", auth=("quiet-app", "q")) for _ in range(2)]
        assert [r.json() for r in quiet] == [{"id": "quiet-app"}] * 2
        # Bayeux and other paths do not count; unauthenticated requests are the
        # endpoint's to refuse, wrong credentials are refused before any bucket.
        assert http.get("/cometd/whoami", auth=("flood-app", "f")).status_code == 200
        assert http.get("/rest/presence/whoami").status_code == 401
        wrong = http.get("/rest/presence/whoami", auth=("quiet-app", "x"))
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Basic")
        assert http.get("/health").status_code == 200
