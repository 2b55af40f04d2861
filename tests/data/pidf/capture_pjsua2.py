"""Capture the PIDF bodies that PJSIP (pjsua2) publishes.

Not a test and not a project dependency: run it by hand in a throw-away
virtualenv that has the ``pjsua2-python`` wheel, e.g.

    python -m venv /tmp/pj && /tmp/pj/bin/pip install pjsua2-python
    /tmp/pj/bin/python tests/data/pidf/capture_pjsua2.py tests/data/pidf

A UDP socket on a free loopback port plays the presence server: it answers
every request 200 (with a SIP-ETag for PUBLISH) and writes each PUBLISH body
to ``pjsua2-<name>.xml``.
"""

import socket
import sys
import threading
import time
from pathlib import Path

import pjsua2 as pj  # type: ignore[import-not-found]

out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("127.0.0.1", 0))
port = server.getsockname()[1]
bodies: list[bytes] = []


def serve() -> None:
    while True:
        data, peer = server.recvfrom(65535)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        if lines[0].startswith("SIP/2.0"):
            continue
        keep = [
            line
            for line in lines[1:]
            if line.split(":", 1)[0].lower() in ("via", "from", "call-id", "cseq", "to")
        ]
        extra = ["SIP-ETag: e1", "Expires: 3600"] if lines[0].startswith("PUBLISH") else []
        reply = "\r\n".join(["SIP/2.0 200 OK", *keep, *extra, "Content-Length: 0", "", ""])
        server.sendto(reply.encode(), peer)
        if lines[0].startswith("PUBLISH") and body:
            bodies.append(body)


threading.Thread(target=serve, daemon=True).start()

ep = pj.Endpoint()
ep.libCreate()
cfg = pj.EpConfig()
cfg.logConfig.level = 0
cfg.logConfig.consoleLevel = 0
ep.libInit(cfg)
transport = pj.TransportConfig()
transport.port = 0
transport.boundAddress = "127.0.0.1"
ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
ep.audDevManager().setNullDev()
ep.libStart()

acc_cfg = pj.AccountConfig()
acc_cfg.idUri = f"sip:alice@127.0.0.1:{port}"
acc_cfg.presConfig.publishEnabled = True
account = pj.Account()
account.create(acc_cfg)


def publish(name: str, status: int, activity: int, note: str) -> None:
    presence = pj.PresenceStatus()
    presence.status = status
    presence.activity = activity
    presence.note = note
    before = len(bodies)
    account.setOnlineStatus(presence)
    deadline = time.monotonic() + 3
    while len(bodies) == before and time.monotonic() < deadline:
        ep.libHandleEvents(50)
    if len(bodies) > before:
        (out_dir / f"pjsua2-{name}.xml").write_bytes(bodies[-1])
        print("captured", name)


publish("online", pj.PJSUA_BUDDY_STATUS_ONLINE, pj.PJRPID_ACTIVITY_UNKNOWN, "")
publish("busy", pj.PJSUA_BUDDY_STATUS_ONLINE, pj.PJRPID_ACTIVITY_BUSY, "In a meeting")
publish("away", pj.PJSUA_BUDDY_STATUS_ONLINE, pj.PJRPID_ACTIVITY_AWAY, "Back soon")
publish("offline", pj.PJSUA_BUDDY_STATUS_OFFLINE, pj.PJRPID_ACTIVITY_UNKNOWN, "")
account.shutdown()
ep.libDestroy()
