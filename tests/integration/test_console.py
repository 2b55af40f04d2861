"""The console in a real browser: Debian's chromium, headless, driven by Playwright.

Two consoles — alice-app's and bob-app's, each in a browser with a new empty
profile — against the setup of ``scripts/serve`` (tests/bundled.py): Bob
watches Alice, Alice authorises him in her console, Alice publishes Busy, and
Bob's console shows the notification arrive.  Playwright drives the system's
chromium through ``executable_path``; it never downloads a browser.

``PRESENCE_CONSOLE_SCREENSHOT=docs/console.png`` keeps Bob's console as a
picture there (the README's); otherwise it goes to the test's directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from tests.adapter_process import AdapterProcess
from tests.bundled import ALICE, BOB, bundled_adapter

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
# Root in a container: no sandbox; and nothing that talks to Google or updates.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WAIT = 30_000  # ms: conditions waited on, generously (a shared, noisy machine)


@pytest.fixture
def playwright() -> Iterator[Playwright]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup installs Debian's chromium")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[AdapterProcess]:
    with bundled_adapter(tmp_path / "adapter") as adapter:
        yield adapter


class Console:
    """One application's console, in a chromium of its own."""

    def __init__(self, playwright: Playwright, profile: Path, url: str) -> None:
        profile.mkdir()  # new and empty
        self.context: BrowserContext = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 720},
        )
        self.page: Page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.problems: list[str] = []
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("console", self._logged)
        self.page.goto(url + "/console")  # redirected to /console/

    def _logged(self, message: ConsoleMessage) -> None:
        # The browser logs every answer that is not 2xx as "Failed to load
        # resource"; the test provokes a 400 on purpose. Script errors count.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(f"console: {message.text}")

    def sign_in(self, application: str, password: str) -> None:
        form = self.page.locator("#sign-in")
        form.get_by_label("Application id").fill(application)
        form.get_by_label("Password").fill(password)
        form.get_by_role("button", name="Sign in").click()
        expect(self.page.locator("#app")).to_be_visible(timeout=WAIT)
        expect(self.page.locator("#signed-in")).to_have_text(application)
        # A WebSocket from the adapter's own page is let in (no long-polling fallback).
        expect(self.page.locator("#link")).to_have_text("live (websocket)", timeout=WAIT)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def consoles(playwright: Playwright, adapter: AdapterProcess, tmp_path: Path) -> Iterator[
    tuple[Console, Console]
]:
    made: list[Console] = []
    try:
        for name in ("alice", "bob"):
            made.append(Console(playwright, tmp_path / f"profile-{name}", adapter.url))
        yield made[0], made[1]
    finally:
        for console in made:
            console.close()


def test_bob_watches_alice_she_authorises_and_her_busy_arrives_live(
    consoles: tuple[Console, Console], tmp_path: Path
) -> None:
    alice, bob = consoles
    assert alice.page.url.endswith("/console/")
    # A wrong password is refused by the Bayeux handshake, and said so.
    form = alice.page.locator("#sign-in")
    form.get_by_label("Application id").fill(ALICE.id)
    form.get_by_label("Password").fill("not-" + ALICE.password)
    form.get_by_role("button", name="Sign in").click()
    expect(form.locator(".status")).to_contain_text("refused", timeout=WAIT)
    expect(alice.page.locator("#app")).to_be_hidden()
    alice.sign_in(ALICE.id, ALICE.password)
    bob.sign_in(BOB.id, BOB.password)

    # A REST refusal is shown with its Parlay X code.
    watch = bob.page.locator("#subscribe")
    watch.get_by_label("Presentity").fill("alice")
    watch.get_by_role("button", name="Subscribe and start notifications").click()
    expect(watch.locator(".status")).to_contain_text("400 SVC0002", timeout=WAIT)

    # Bob asks to watch Alice: Subscribe Presence + Start Presence Notification.
    watch.get_by_label("Presentity").fill("sip:alice@example.com")
    watch.get_by_role("button", name="Subscribe and start notifications").click()
    expect(watch.locator(".status")).to_have_text("asked sip:alice@example.com", timeout=WAIT)

    # Alice sees him asking (Get Open Subscriptions) and authorises him.
    alice.page.locator("#refresh").click()
    asking = alice.page.locator('#open li[data-watcher="sip:bob@example.com"]')
    expect(asking).to_be_visible(timeout=WAIT)
    expect(asking).to_contain_text("presence console")
    asking.get_by_role("button", name="Authorise").click()
    expect(alice.page.locator("#watchers .status")).to_have_text(
        "authorised sip:bob@example.com", timeout=WAIT
    )
    expect(alice.page.locator('#open li[data-watcher="sip:bob@example.com"]')).to_have_count(0)
    granted = bob.page.locator('#log li[data-kind="notifySubscription"]')
    expect(granted).to_contain_text(
        "sip:alice@example.com grants Activity, Place, Privacy, Sphere", timeout=WAIT
    )

    # Alice publishes Busy from the pickers; Bob's console shows it arrive.
    publish = alice.page.locator("#publish")
    publish.get_by_label("Activity").select_option("Busy")
    publish.get_by_label("Place").select_option("Office")
    publish.get_by_label("Note").fill("writing a report")
    publish.get_by_role("button", name="Publish").click()
    expect(publish.locator(".status")).to_contain_text("published Activity: Busy", timeout=WAIT)

    busy = bob.page.locator('#log li[data-kind="statusChanged"]').filter(has_text="Busy")
    expect(busy).to_have_count(1, timeout=WAIT)
    expect(busy).to_contain_text("sip:alice@example.com: Activity: Busy (“writing a report”)")
    expect(busy).to_contain_text("Place: Office")
    watched = bob.page.locator('#watching li[data-presentity="sip:alice@example.com"]')
    expect(watched).to_contain_text("Activity: Busy")
    expect(watched.locator(".pill")).to_have_text("watching")

    screenshot = Path(os.environ.get("PRESENCE_CONSOLE_SCREENSHOT") or tmp_path / "console.png")
    bob.page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert alice.problems == [] and bob.problems == []
