"""The presence server's part for bench/notify_cost.py: SIP and XCAP, no Kamailio.

    notify_cost_peer.py RULES_JSON

Run by the benchmark, not by hand.  Independent of the product's SIP stack
(like notify_latency_sip.py).  Over one UDP socket it answers every SUBSCRIBE
200 (To tag, Expires, Contact, as the bundled Kamailio does) and sends the
dialog's first NOTIFY, active, with a PIDF body; it answers OPTIONS 200.  An
HTTP server in a thread serves the pres-rules documents of RULES_JSON
(``{presentity: XML}``) at ``/xcap-root/pres-rules/users/<uri>/index``.

Protocol on stdin/stdout, one line each: prints ``{"sip": PORT, "xcap":
PORT}`` when bound; reads ``RUN <rate/s> <seconds> <first sequence>
<senders>`` and sends NOTIFYs round-robin over the dialogs, ``<senders>``
forked processes each pacing its own share of the dialogs (and of the rate)
from a socket of its own, the NOTIFYs shaped as Kamailio's
(tests/data/kamailio/08-notify-active.txt) with notify_latency_sip.py's PIDF
body, its note stamped ``s=<sequence> t=<send time, µs since the epoch>``;
prints one JSON line ``{"sent": N, "answered": N, "elapsed": S}`` (answered:
200s received within 2 s of the last send); ``QUIT`` ends it.
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from notify_latency_sip import pidf  # noqa: E402

HOST = "127.0.0.1"
EXPIRES = 3600


def headers_of(data: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """Start line and the first value of each header (full or compact names, lower case)."""
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    compact = {b"v": b"via", b"f": b"from", b"t": b"to", b"i": b"call-id", b"m": b"contact"}
    found: dict[bytes, bytes] = {}
    for line in head[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        found.setdefault(compact.get(key, key), value.strip())
    return head[0], found


def tag_of(value: bytes) -> bytes:
    for part in value.split(b";")[1:]:
        name, _, tag = part.strip().partition(b"=")
        if name.lower() == b"tag":
            return tag
    return b""


def uri_of(value: bytes) -> bytes:
    return value.split(b"<", 1)[1].split(b">", 1)[0] if b"<" in value else value.split(b";")[0]


@dataclass
class Dialog:
    target: bytes  # the SUBSCRIBE's Contact: the NOTIFY's Request-URI
    watcher: bytes
    presentity: bytes
    watcher_tag: bytes
    our_tag: bytes
    call_id: bytes
    cseq: int = 1


def notify(dialog: Dialog, port: int, body: bytes) -> bytes:
    dialog.cseq += 1
    return b"".join((
        b"NOTIFY ", dialog.target, b" SIP/2.0\r\n",
        b"Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK%s.0\r\n"
        % (port, secrets.token_hex(8).encode()),
        b"To: <", dialog.watcher, b">;tag=", dialog.watcher_tag, b"\r\n",
        b"From: <", dialog.presentity, b">;tag=", dialog.our_tag, b"\r\n",
        b"CSeq: %d NOTIFY\r\n" % dialog.cseq,
        b"Call-ID: ", dialog.call_id, b"\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"User-Agent: presence-adapter bundled presence server (Kamailio)\r\n",
        b"Max-Forwards: 70\r\n",
        b"Event: presence\r\n",
        b"Contact: <sip:127.0.0.1:%d;transport=udp>\r\n" % port,
        b"Subscription-State: active;expires=3000\r\n",
        b"Content-Type: application/pidf+xml\r\n\r\n",
        body,
    ))


def body(dialog: Dialog, seq: int) -> bytes:
    return pidf(dialog.presentity.decode(), seq, time.time_ns() // 1000)


class Peer:
    def __init__(self, presentities: set[str]) -> None:
        self.presentities = presentities
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.dialogs: dict[bytes, Dialog] = {}  # by Call-ID
        self.destinations: dict[bytes, tuple[str, int]] = {}  # by Call-ID: the subscriber
        self.lock = threading.Lock()

    def serve(self) -> None:
        while True:
            data, addr = self.sock.recvfrom(65535)
            start, found = headers_of(data)
            if start.startswith(b"SIP/2.0"):
                continue  # the 200 to the first NOTIFY
            method = start.split(b" ", 1)[0]
            lines = [b"SIP/2.0 200 OK"]
            for name in (b"via", b"from", b"call-id", b"cseq"):
                lines.append(name + b": " + found.get(name, b""))
            call_id = found.get(b"call-id", b"")
            with self.lock:
                dialog = self.dialogs.get(call_id)
            our_tag = dialog.our_tag if dialog else secrets.token_hex(8).encode()
            to = found.get(b"to", b"")
            lines.append(b"To: " + (to if tag_of(to) else to + b";tag=" + our_tag))
            if method == b"SUBSCRIBE":
                expires = found.get(b"expires", b"%d" % EXPIRES)
                lines.append(b"Expires: " + expires)
                lines.append(b"Contact: <sip:127.0.0.1:%d;transport=udp>" % self.port)
            lines.append(b"Content-Length: 0\r\n\r\n")
            self.sock.sendto(b"\r\n".join(lines), addr)
            if method != b"SUBSCRIBE":
                continue
            if expires.strip() == b"0":
                with self.lock:
                    self.dialogs.pop(call_id, None)
                continue
            if dialog is None:
                dialog = Dialog(
                    uri_of(found.get(b"contact", b"")), uri_of(found.get(b"from", b"")),
                    uri_of(to), tag_of(found.get(b"from", b"")), our_tag, call_id,
                )
                with self.lock:
                    # A watcher's new subscription to the same presentity
                    # replaces its last: NOTIFYs go to the dialog in use.
                    pair = dialog.watcher, dialog.presentity
                    for old in [k for k, d in self.dialogs.items()
                                if (d.watcher, d.presentity) == pair]:
                        del self.dialogs[old]
                    self.dialogs[call_id] = dialog
                    self.destinations[call_id] = addr
            self.sock.sendto(notify(dialog, self.port, body(dialog, -1)), addr)

    def run(self, rate: float, seconds: float, first: int, senders: int) -> dict[str, float]:
        with self.lock:
            # The bench's watches only: not the adapter's own canary
            # subscription (adapter/liveness.py).
            dialogs = sorted(
                (d for d in self.dialogs.values() if d.presentity.decode() in self.presentities),
                key=lambda d: d.presentity,
            )
        children = []
        started = time.monotonic()
        for k in range(senders):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: its share of dialogs, at its share of the rate
                os.close(read)
                try:
                    result = send(dialogs[k::senders], rate / senders, seconds, first + k, senders,
                                  self.destinations)
                    os.write(write, json.dumps(result).encode())
                finally:
                    os._exit(0)
            os.close(write)
            children.append((pid, read))
        totals = {"sent": 0, "answered": 0}
        for pid, read in children:
            chunks = []
            while chunk := os.read(read, 65536):
                chunks.append(chunk)
            os.close(read)
            os.waitpid(pid, 0)
            result = json.loads(b"".join(chunks) or b"{}")
            for key in totals:
                totals[key] += result.get(key, 0)
        return {**totals, "elapsed": time.monotonic() - started}



def send(
    dialogs: list[Dialog], rate: float, seconds: float, first: int, step: int,
    destinations: dict[bytes, tuple[str, int]],
) -> dict[str, int]:
    """In a forked child: NOTIFYs from a socket of its own, paced; then count the 200s."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    total = int(rate * seconds)
    for dialog in dialogs:
        # A forked child's CSeqs never reach the parent: each run starts above
        # the last (its first sequence number grows by millions a run), as a
        # lower CSeq in a dialog is refused (RFC 3261 §12.2.2).
        dialog.cseq = max(dialog.cseq, first)
    answered = 0
    began = time.monotonic()
    seq = first
    for n in range(total):
        due = began + n / rate
        while (wait := due - time.monotonic()) > 0:
            time.sleep(min(wait, 0.001))
        dialog = dialogs[n % len(dialogs)]
        sock.sendto(notify(dialog, port, body(dialog, seq)), destinations[dialog.call_id])
        seq += step
        while True:  # drain the 200s as they come, so the socket's buffer never fills
            try:
                sock.recv(65535)
            except BlockingIOError:
                break
            answered += 1
    deadline = time.monotonic() + 2.0
    while answered < total and time.monotonic() < deadline:
        try:
            sock.recv(65535)
            answered += 1
        except BlockingIOError:
            time.sleep(0.005)
    return {"sent": total, "answered": answered}


def xcap_server(rules: dict[str, str]) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            parts = urllib.parse.unquote(self.path).split("/")
            # /xcap-root/pres-rules/users/<uri>/index
            document = rules.get(parts[4]) if len(parts) == 6 else None
            if document is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = document.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/auth-policy+xml")
            self.send_header("ETag", '"bench"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> int:
    with open(sys.argv[1]) as source:
        rules = json.load(source)
    peer = Peer(set(rules))
    xcap = xcap_server(rules)
    threading.Thread(target=peer.serve, daemon=True).start()
    print(json.dumps({"sip": peer.port, "xcap": xcap.server_address[1]}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "QUIT":
            break
        if command[0] == "RUN":
            rate, seconds, first, senders = (float(command[1]), float(command[2]),
                                             int(command[3]), int(command[4]))
            print(json.dumps(peer.run(rate, seconds, first, senders)), flush=True)
        elif command[0] == "DIALOGS":
            with peer.lock:
                print(json.dumps({"dialogs": len(peer.dialogs)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
