"""adapter.cluster.peer: calls between nodes are signed, and only signed ones pass as such.

A small Starlette app behind :class:`PeerGate`, called through httpx's ASGI
transport with and without :class:`NodeAuth`; then which key a node signs with,
on a real PostgreSQL store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from adapter.cluster.peer import (
    FORWARDED,
    MAX_SKEW,
    SIGNATURE,
    NodeAuth,
    PeerCheck,
    PeerGate,
    cluster_secret,
    forwarded_by,
)
from adapter.config import Config, load_config
from adapter.store.postgres import PostgresStore

REPO = Path(__file__).resolve().parents[3]

SECRET = b"s" * 40
NOW = 1_800_000_000.0


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"peer": forwarded_by(request), "body": body.decode()})


def gate(clock: float = NOW) -> tuple[Starlette, PeerCheck]:
    app = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])
    check = PeerCheck(SECRET, clock=lambda: clock)
    app.add_middleware(PeerGate, check=check)
    return app, check


def client(app: Starlette, auth: httpx.Auth | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://node-b", auth=auth
    )


def signed(node: str = "a", secret: bytes = SECRET, clock: float = NOW) -> NodeAuth:
    return NodeAuth(node, secret, clock=lambda: clock)


def refused(answer: httpx.Response) -> bool:
    return (
        answer.status_code == 403
        and answer.json()["requestError"]["policyException"]["messageId"] == "POL0001"
    )


@pytest.mark.anyio
async def test_a_signed_call_passes_with_its_node_and_body() -> None:
    app, check = gate()
    async with client(app, signed("a")) as http:
        answer = await http.post("/rest/presence/sip%3Aalice%40x", params={"q": "1 2"},
                                 content=b'{"presence":[]}')
        got = await http.get("/cluster/rules", params={"presentity": "sip:alice@x"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"peer": "a", "body": '{"presence":[]}'}
    assert got.json()["peer"] == "a"
    assert check.refused == {}


@pytest.mark.anyio
async def test_an_unmarked_call_passes_as_no_node_s() -> None:
    app, check = gate()
    async with client(app) as http:
        answer = await http.post("/rest/presence", content=b"x")
    assert answer.json() == {"peer": None, "body": "x"}
    assert check.refused == {}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({FORWARDED: "a"}, "unsigned"),
        ({}, "unsigned"),  # /cluster/ with nothing at all
        ({FORWARDED: "a", SIGNATURE: "t=1,v1=zz"}, "malformed"),
        ({FORWARDED: "a b", SIGNATURE: f"t={int(NOW)},v1={'0' * 64}"}, "malformed"),
        ({FORWARDED: "a", SIGNATURE: f"t={int(NOW)},v1={'0' * 64}"}, "bad-signature"),
    ],
)
async def test_a_forged_call_is_refused_and_counted(headers: dict[str, str], reason: str) -> None:
    app, check = gate()
    async with client(app) as http:
        answer = await http.post("/cluster/rules", params={"presentity": "sip:a@x"},
                                 headers=headers)
    assert refused(answer), answer.text
    assert check.refused == {reason: 1}


@pytest.mark.anyio
async def test_another_secret_a_stale_time_or_a_changed_request_is_refused() -> None:
    app, check = gate()
    async with client(app, signed(secret=b"t" * 40)) as http:
        assert refused(await http.get("/cluster/rules"))
    async with client(app, signed(clock=NOW - MAX_SKEW - 5)) as http:
        assert refused(await http.get("/cluster/rules"))
    async with client(app, signed(clock=NOW + MAX_SKEW - 5)) as http:
        assert (await http.get("/cluster/rules")).status_code == 200  # within the skew

    # A signature seen on the wire, moved onto another path or another body.
    captured: dict[str, Any] = {}

    async def keep(request: httpx.Request) -> None:
        captured.update(request.headers)

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://node-b", auth=signed(),
        event_hooks={"request": [keep]},
    ) as http:
        assert (await http.post("/rest/presence", content=b"Busy")).status_code == 200
    stolen = {FORWARDED: captured[FORWARDED.lower()], SIGNATURE: captured[SIGNATURE.lower()]}
    async with client(app) as http:
        assert refused(await http.post("/rest/presence", content=b"Away", headers=stolen))
        assert refused(await http.post("/rest/other", content=b"Busy", headers=stolen))
        assert (await http.post("/rest/presence", content=b"Busy", headers=stolen)).json() == {
            "peer": "a", "body": "Busy"}
    assert check.refused == {"bad-signature": 3, "stale": 1}


# -- the key: configured, or shared in the store ---------------------------------------


def node_config(tmp_path: Path, store_url: str, cluster: str) -> Config:
    """conf/adapter.toml as node ``a`` of a cluster on ``store_url``."""
    text = (REPO / "conf/adapter.toml").read_text()
    text = text.replace('path = "var/adapter.sqlite"', f'url = "{store_url}"', 1)
    path = tmp_path / "node.toml"
    path.write_text(text + '\n[cluster]\nnode = "a"\nredis = "redis://127.0.0.1:6379/0"\n'
                    + cluster)
    return load_config(path, cwd=REPO)


def test_a_node_signs_with_the_configured_secret_else_the_store_s(
    tmp_path: Path, postgres_url: str
) -> None:
    configured = "c" * 64
    store = PostgresStore(postgres_url, node="a")
    try:
        explicit = node_config(tmp_path, postgres_url, f'secret = "{configured}"\n')
        assert cluster_secret(explicit, store) == configured.encode()
        contract = node_config(tmp_path, postgres_url, "")
        shared = cluster_secret(contract, store)
        assert shared == store.cluster_secret() and shared != configured.encode()
        # What node a signs with the store's key, node b's check accepts.
        other = PostgresStore(postgres_url, node="b")
        check = PeerCheck(cluster_secret(contract, other))
        asyncio.run(other.close())
        app = Starlette(routes=[Route("/{path:path}", echo, methods=["GET"])])
        app.add_middleware(PeerGate, check=check)

        async def call(secret: bytes) -> httpx.Response:
            async with client(app, NodeAuth("a", secret)) as http:
                return await http.get("/cluster/rules")

        assert asyncio.run(call(shared)).json()["peer"] == "a"
        assert refused(asyncio.run(call(configured.encode())))
        assert check.refused == {"bad-signature": 1}
    finally:
        asyncio.run(store.close())
