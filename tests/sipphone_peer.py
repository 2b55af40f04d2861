"""One PJSIP phone (pjsua2), driven over stdin/stdout JSON lines by tests/sipphone.py.

Not imported by the tests: run as ``python tests/sipphone_peer.py URI PROXY``.
pjsua2 allows one Endpoint per process and aborts the process (a C assert)
beyond its compiled limits, so each phone is a process of its own.

The phone is an ordinary SIP user agent as a SIP user has one: an account
for ``URI`` with no registration (the bundled Kamailio is no registrar),
every request sent through ``PROXY`` over UDP (the outbound proxy), and
presence published with PUBLISH (RFC 3903) from pjsua2's PresenceStatus.

Commands (one JSON object per line on stdin)::

    {"cmd": "publish", "status": "online"|"offline", "activity": "busy"|"away"|"unknown",
     "note": "..."}
    {"cmd": "subscribe", "buddy": "sip:..."}
    {"cmd": "unsubscribe", "buddy": "sip:..."}
    {"cmd": "quit"}

Events (one JSON object per line on stdout)::

    {"event": "ready", "uri": ..., "contact": "host:port"}
    {"event": "buddy", "buddy": ..., "status": "online"|"offline"|"unknown",
     "status_text": ..., "activity": "busy"|"away"|"unknown", "note": ...,
     "sub_state": "PENDING"|"ACTIVE"|"TERMINATED"|..., "term_reason": ..., "term_code": ...}
    {"event": "notify", "buddy": ..., "state": <Subscription-State>, "body": <PIDF text>}
    {"event": "response", "method": "PUBLISH"|"SUBSCRIBE", "code": 200}
    {"event": "error", "error": ...}
"""

from __future__ import annotations

import json
import os
import re
import select
import sys
from typing import Any

import pjsua2 as pj  # type: ignore[import-not-found]

STATUS = {
    "online": pj.PJSUA_BUDDY_STATUS_ONLINE,
    "offline": pj.PJSUA_BUDDY_STATUS_OFFLINE,
}
ACTIVITY = {
    "unknown": pj.PJRPID_ACTIVITY_UNKNOWN,
    "away": pj.PJRPID_ACTIVITY_AWAY,
    "busy": pj.PJRPID_ACTIVITY_BUSY,
}
STATUS_NAME = {
    pj.PJSUA_BUDDY_STATUS_ONLINE: "online",
    pj.PJSUA_BUDDY_STATUS_OFFLINE: "offline",
    pj.PJSUA_BUDDY_STATUS_UNKNOWN: "unknown",
}
ACTIVITY_NAME = {value: name for name, value in ACTIVITY.items()}

# pjsua2 logs every SIP message it sends or receives at level 5:
# "RX 512 bytes Response msg 200/PUBLISH/cseq=... from UDP ...:\n<message>".
RESPONSE_LOG = re.compile(r"RX \d+ bytes Response msg (\d{3})/(PUBLISH|SUBSCRIBE)/")


# pjlib writes its own lines to fd 1 before any log configuration applies:
# events get a private copy of stdout, and fd 1 goes to stderr.
EVENTS = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)


def emit(event: dict[str, Any]) -> None:
    EVENTS.write(json.dumps(event) + "\n")
    EVENTS.flush()


class Log(pj.LogWriter):  # type: ignore[misc]
    """Reports the final responses to PUBLISH and SUBSCRIBE from pjsua2's message log."""

    def write(self, entry: Any) -> None:
        sys.stderr.write(entry.msg if entry.msg.endswith("\n") else entry.msg + "\n")
        match = RESPONSE_LOG.search(entry.msg)
        if match:
            emit({"event": "response", "method": match[2], "code": int(match[1])})


class Buddy(pj.Buddy):  # type: ignore[misc]
    def __init__(self, uri: str) -> None:
        super().__init__()
        self.uri = uri

    def onBuddyState(self) -> None:  # noqa: N802 (pjsua2's name)
        info = self.getInfo()
        status = info.presStatus
        emit(
            {
                "event": "buddy",
                "buddy": self.uri,
                "status": STATUS_NAME.get(status.status, str(status.status)),
                "status_text": status.statusText,
                "activity": ACTIVITY_NAME.get(status.activity, str(status.activity)),
                "note": status.note,
                "sub_state": info.subStateName,
                "term_reason": info.subTermReason,
                "term_code": info.subTermCode,
            }
        )

    def onBuddyEvSubState(self, prm: Any) -> None:  # noqa: N802 (pjsua2's name)
        # The NOTIFY itself, as received: its Subscription-State and body.
        event = prm.e
        if event.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        tsx = event.body.tsxState
        if tsx.type != pj.PJSIP_EVENT_RX_MSG:
            return
        message = tsx.src.rdata.wholeMsg
        head, _, body = message.partition("\r\n\r\n")
        if not head.startswith("NOTIFY "):
            return
        state = ""
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "subscription-state":
                state = value.strip()
        emit({"event": "notify", "buddy": self.uri, "state": state, "body": body})


def main() -> None:
    uri, proxy = sys.argv[1], sys.argv[2]
    ep = pj.Endpoint()
    ep.libCreate()
    config = pj.EpConfig()
    config.uaConfig.threadCnt = 0  # events are handled in this thread's loop only
    config.uaConfig.mainThreadOnly = False
    config.logConfig.level = 5
    config.logConfig.consoleLevel = 5  # what reaches the writer
    config.logConfig.msgLogging = 1
    log = Log()
    config.logConfig.writer = log
    config.logConfig.decor = 0
    ep.libInit(config)
    transport_config = pj.TransportConfig()
    transport_config.port = 0
    transport_config.boundAddress = "127.0.0.1"
    transport = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport_config)
    ep.audDevManager().setNullDev()
    ep.libStart()

    account_config = pj.AccountConfig()
    account_config.idUri = uri
    account_config.sipConfig.proxies.append(f"{proxy};lr")
    account_config.presConfig.publishEnabled = True
    account = pj.Account()
    account.create(account_config)
    buddies: dict[str, Buddy] = {}
    local = ep.transportGetInfo(transport).localName
    emit({"event": "ready", "uri": uri, "contact": local})

    def run(command: dict[str, Any]) -> bool:
        what = command.get("cmd")
        if what == "publish":
            presence = pj.PresenceStatus()
            presence.status = STATUS[command.get("status", "online")]
            presence.activity = ACTIVITY[command.get("activity", "unknown")]
            presence.note = command.get("note", "")
            account.setOnlineStatus(presence)
        elif what == "subscribe":
            buddy_config = pj.BuddyConfig()
            buddy_config.uri = command["buddy"]
            buddy_config.subscribe = True
            buddy = Buddy(command["buddy"])
            buddy.create(account, buddy_config)
            buddies[command["buddy"]] = buddy
        elif what == "unsubscribe":
            buddies[command["buddy"]].subscribePresence(False)
        elif what == "quit":
            return False
        else:
            emit({"event": "error", "error": f"unknown command {command!r}"})
        return True

    # Raw reads of fd 0: a buffered readline would hide the lines after the
    # first from select().
    pending = b""
    running = True
    while running:
        ep.libHandleEvents(20)
        readable, _, _ = select.select([0], [], [], 0)
        if readable:
            chunk = os.read(0, 65536)
            if not chunk:
                break  # the controller went away
            pending += chunk
        while running and b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            try:
                running = run(json.loads(line))
            except pj.Error as exc:
                emit({"event": "error", "error": f"{line!r}: {exc.title}: {exc.reason}"})
            except (KeyError, ValueError) as exc:
                emit({"event": "error", "error": f"{line!r}: {exc!r}"})
    for buddy in buddies.values():
        buddy.subscribePresence(False)
    # Let the un-SUBSCRIBEs and the un-PUBLISH leave before the library goes.
    account.shutdown()
    for _ in range(10):
        ep.libHandleEvents(20)
    ep.libDestroy()


if __name__ == "__main__":
    main()
