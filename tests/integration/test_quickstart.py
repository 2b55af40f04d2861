"""The README's quickstart, and docs/rest.md's tour of every operation, followed word for word.

Its ``sh`` blocks are run as written against the setup of ``scripts/serve``
(tests/bundled.py) on free ports: the one thing changed is the adapter's
address, ``http://127.0.0.1:8080``, which the README names once per terminal
(``A=...``).  The listener blocks (``examples/listen.mjs``, ``examples/listen.py``)
run in the background, each in a terminal of its own as the README says; the
others run in order in one shell, as typed in the third terminal.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bundled import bundled_adapter
from tests.presence_server import REPO

pytestmark = pytest.mark.integration

README = REPO / "README.md"
REST_TOUR = REPO / "docs" / "rest.md"
ADDRESS = "http://127.0.0.1:8080"  # where scripts/serve serves, as the README says


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", text, flags=re.M | re.S)


def quickstart_blocks() -> list[str]:
    """The ``sh`` blocks of the README's "Quickstart" section, in order."""
    text = README.read_text()
    start = text.index("\n## Quickstart\n")
    end = text.find("\n## ", start + 1)
    return sh_blocks(text[start : end if end != -1 else len(text)])


def typed(blocks: list[str], url: str) -> dict[int, str]:
    """Runs ``blocks`` in order in one shell, as typed in a terminal, the adapter at
    ``url``: the output of each, by index. Fails if any command fails."""
    script = "".join(
        f"printf '\\n::block %d\\n' {i}\n{block.replace(ADDRESS, url)}\n"
        for i, block in enumerate(blocks)
    )
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, f"{script}\nstdout: {run.stdout}\nstderr: {run.stderr}"
    return {
        int(n): out.strip()
        for n, out in re.findall(r"^::block (\d+)\n(.*?)(?=^::block |\Z)", run.stdout,
                                 flags=re.M | re.S)
    }


class Terminal:
    """A listener block running in the background, its lines collected."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.lines: list[dict[str, Any]] = []  # the JSON lines of its stdout
        self.errors: list[str] = []  # stderr, and what else it printed
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: Ctrl-C reaches the listener
        )
        self._threads = [
            threading.Thread(target=self._read, args=(self.process.stdout, self._line)),
            threading.Thread(target=self._read, args=(self.process.stderr, self._error)),
        ]
        for thread in self._threads:
            thread.start()

    def _read(self, stream: Any, handle: Callable[[str], None]) -> None:
        for line in stream:
            with self._changed:
                handle(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _line(self, line: str) -> None:
        # The listener's lines are JSON; npm ci, run first, says what it installed.
        if line.startswith("{"):
            self.lines.append(json.loads(line))
        else:
            self.errors.append(line)

    def _error(self, line: str) -> None:
        self.errors.append(line)

    def wait(self, ready: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (result := ready()):
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(
                        f"{what}: not seen within {timeout} s from\n{self.script}\n"
                        f"stdout: {self.lines}\nstderr: {self.errors[-30:]}"
                    )
                self._changed.wait(min(left, 1))
            return result

    def wait_listening(self) -> None:
        # npm ci runs first in the Node listener's terminal: a generous timeout.
        self.wait(lambda: any("listening on /bayeux/bob-app/**" in e for e in self.errors),
                  "listening", timeout=180)

    def wait_message(self, kind: str, check: Callable[[Any], bool] = lambda _: True) -> Any:
        def found() -> Any:
            return next((m for m in self.lines if kind in m["data"] and check(m)), None)

        return self.wait(found, kind)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # Ctrl-C, as the README says
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for thread in self._threads:
            thread.join(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    started: list[Terminal] = []
    yield started
    for terminal in started:
        terminal.stop()


def attributes(message: dict[str, Any]) -> dict[str, str]:
    """unionElement → value of a statusChanged message."""
    changed = message["data"]["statusChanged"]["changedAttributes"]
    return {
        a["typeAndValue"]["unionElement"]: a["typeAndValue"][
            a["typeAndValue"]["unionElement"].lower()
        ]
        for a in changed
    }


def test_the_readme_quickstart_word_for_word(tmp_path: Path, terminals: list[Terminal]) -> None:
    blocks = quickstart_blocks()
    listeners = [b for b in blocks if "examples/listen" in b]
    typed_blocks = [b for b in blocks if "examples/listen" not in b]
    assert [("listen.mjs" in b, "listen.py" in b) for b in listeners] == [
        (True, False), (False, True)
    ], "the README shows the Node listener, then the Python one"
    for block in [*listeners, typed_blocks[0]]:
        assert f"A={ADDRESS}\n" in block, f"each terminal names the adapter once:\n{block}"
    assert all(ADDRESS not in b for b in typed_blocks[1:]), "the steps use $A"
    assert len(typed_blocks) == 8, "the address, then the seven steps"

    with bundled_adapter(tmp_path) as adapter:

        def here(block: str) -> str:
            return block.replace(ADDRESS, adapter.url)

        for block in listeners:
            terminals.append(Terminal(here(block)))
        for terminal in terminals:
            terminal.wait_listening()

        outputs = typed(typed_blocks, adapter.url)  # as in the third terminal
        # 2. Alice sees Bob's request, as the README shows it.
        assert json.loads(outputs[2]) == {
            "result": [
                {
                    "application": "buddy-list",
                    "attributes": ["Activity", "Place"],
                    "watcher": "sip:bob@example.com",
                }
            ]
        }
        # 5. Start Presence Notification: every presentity subscribed.
        assert json.loads(outputs[5]) == {"result": []}
        for other in (1, 3, 4, 6, 7):
            assert outputs[other] == "", f"step {other} answers 204, no body"

        for terminal in terminals:
            granted = terminal.wait_message("notifySubscription")
            assert granted == {
                "channel": "/bayeux/bob-app/subscription",
                "data": {
                    "notifySubscription": {
                        "presentity": "sip:alice@example.com",
                        "decisions": [
                            {"presenceAttribute": "Activity", "decision": True},
                            {"presenceAttribute": "Place", "decision": True},
                        ],
                    }
                },
            }
            busy = terminal.wait_message(
                "statusChanged", lambda m: attributes(m).get("Activity") == "Busy"
            )
            assert busy["channel"] == "/bayeux/bob-app/notifications"
            assert busy["data"]["statusChanged"]["correlator"] == "bob-n-1"
            assert busy["data"]["statusChanged"]["presentity"] == "sip:alice@example.com"
            assert attributes(busy) == {"Activity": "Busy", "Place": "Office"}
            terminal.wait_message(
                "statusChanged", lambda m: attributes(m).get("Activity") == "Meal"
            )


def test_the_rest_tour_runs_top_to_bottom(tmp_path: Path) -> None:
    blocks = sh_blocks(REST_TOUR.read_text())
    assert blocks[0] == f"A={ADDRESS}\n"
    assert all(ADDRESS not in b for b in blocks[1:])
    with bundled_adapter(tmp_path) as adapter:
        outputs = typed(blocks, adapter.url)
    assert json.loads(outputs[2]) == {  # Get Open Subscriptions
        "result": [
            {
                "application": "buddy-list",
                "attributes": ["Activity", "Place", "Privacy"],
                "watcher": "sip:bob@example.com",
            }
        ]
    }
    assert json.loads(outputs[5]) == {"result": ["sip:bob@example.com"]}  # Get My Watchers
    decoder, text, answers = json.JSONDecoder(), outputs[6], []
    while text:  # Get User Presence, twice: two bodies on one line
        answer, end = decoder.raw_decode(text)
        answers.append(answer)
        text = text[end:]
    assert len(answers) == 2
    for answer in answers:  # Privacy was published but not granted; Sphere not asked
        for attribute in answer["result"]:
            assert attribute["typeAndValue"]["unionElement"] in {"Activity", "Place"}
    assert json.loads(outputs[7]) == {"result": []}  # Start Presence Notification
    # Get My Watchers as an address named: bob, just blocked, is no longer one.
    assert json.loads(outputs[11]) == {"result": []}
    for empty in (1, 3, 4, 8, 9, 10):
        assert outputs[empty] == "", f"block {empty} answers 204, no body"
