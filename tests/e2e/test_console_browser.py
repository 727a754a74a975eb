"""The status page in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium), against `serve`: the key from the URL fragment, the list, one isolation's timeline,
attacker-controlled text shown as text, a release from the timeline, and, on a deployed API's address
(mapped to the local stack by the browser's resolver), how to release from the CLI instead. `make test` installs the browser when it can; without it these
tests are skipped, saying how to install it.

`UPDATE_SCREENSHOT=1` also writes docs/console.png and docs/console-release.png (docs/responders.md shows them)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.helpers import ROOT, ServedDemo, serve_demo

pytestmark = [pytest.mark.e2e, pytest.mark.enable_socket, pytest.mark.timeout(240)]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "Chromium is not installed: apt-get install chromium chromium-driver (make test does it as root)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402 - only once the browser is known to be there
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

#: A deployed API's host name; the browser resolves it to the local stack.
DEPLOYED_HOST = "a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com"
HOSTILE = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'


@pytest.fixture(scope="module")
def served() -> Iterator[ServedDemo]:
    with serve_demo() as running:
        yield running


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,900",
        f"--host-resolver-rules=MAP {DEPLOYED_HOST} 127.0.0.1",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _isolate(served: ServedDemo, label: str, reason: str) -> str:
    import json
    import urllib.request

    instance = served.demo.instance(label)
    body = {"instance_id": instance.instance_id, "account_id": instance.account_id, "region": instance.region,
            "reason": reason, "requested_by": HOSTILE}  # fmt: skip
    request = urllib.request.Request(
        served.url + "/isolate",
        data=json.dumps(body).encode(),
        headers={"x-api-key": served.key, "content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        isolation_id = str(json.loads(response.read())["isolation_id"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        check = urllib.request.Request(
            served.url + f"/isolations/{isolation_id}", headers={"x-api-key": served.key}
        )
        with urllib.request.urlopen(check, timeout=30) as response:  # noqa: S310 - loopback
            if json.loads(response.read())["status"] not in ("QUEUED", "IN_PROGRESS"):
                return isolation_id
        time.sleep(0.2)
    return isolation_id


def test_the_page_lists_isolations_and_shows_a_timeline_with_every_value_as_text(
    served: ServedDemo, browser: Any
) -> None:
    # Given two isolations, one of them carrying hostile markup in the fields a requester controls
    _isolate(served, "web-3", "suspicious beaconing")
    hostile = _isolate(served, "ipv6-1", HOSTILE)

    # When a responder opens the page with the key in the fragment
    browser.get(f"{served.url}/console#key={served.key}")
    wait = WebDriverWait(browser, 20)
    row = wait.until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-id="{hostile}"]'))
    )

    # Then the key left the address bar at once and lives in the tab's session storage only
    assert "#key" not in browser.current_url and served.key not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('ec2-isolation-key')") == served.key
    assert browser.execute_script("return localStorage.length") == 0
    # And the list shows the isolation with its status
    assert "ISOLATED" in row.text

    # When the isolation is opened
    row.click()
    wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "detail"), "swap-security-groups"))
    detail = browser.find_element(By.ID, "detail")

    # Then its timeline, prior state and the hostile text are shown, as text: no element was made of it
    assert "Timeline" in detail.text and "Prior state" in detail.text
    assert HOSTILE in detail.text
    assert browser.find_elements(By.TAG_NAME, "img") == []
    assert len(browser.find_elements(By.TAG_NAME, "script")) == 1  # the page's own
    assert browser.title == "ec2-isolation"

    if os.environ.get("UPDATE_SCREENSHOT"):
        browser.save_screenshot(str(ROOT / "docs" / "console.png"))


def test_a_wrong_key_says_so(served: ServedDemo, browser: Any) -> None:
    browser.get(f"{served.url}/console#key=not-the-key")
    WebDriverWait(browser, 20).until(
        expected_conditions.text_to_be_present_in_element((By.ID, "error"), "missing or wrong")
    )


def test_the_page_loads_nothing_from_elsewhere(served: ServedDemo, browser: Any) -> None:
    browser.get(f"{served.url}/console")
    entries = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(str(name).startswith(served.url) for name in entries), entries


def _open_timeline(browser: Any, base: str, key: str, isolation_id: str) -> Any:
    browser.get(f"{base}/console#key={key}")
    wait = WebDriverWait(browser, 20)
    wait.until(
        expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, f'tr[data-id="{isolation_id}"]'))
    ).click()
    wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "detail"), isolation_id))
    return wait


def test_a_responder_releases_an_isolation_from_its_timeline(served: ServedDemo, browser: Any) -> None:
    # Given an isolated instance, its timeline open
    isolation_id = _isolate(served, "web-2", "looked like beaconing")
    wait = _open_timeline(browser, served.url, served.key, isolation_id)

    # When the responder asks for its release, gives a reason and confirms
    wait.until(expected_conditions.element_to_be_clickable((By.ID, "release-open"))).click()
    wait.until(expected_conditions.presence_of_element_located((By.ID, "release-reason"))).send_keys(
        "false positive: backup job"
    )
    browser.find_element(By.ID, "release-confirm").click()

    # Then the page follows it to RELEASED and shows the release's steps, reason and requester
    wait.until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail h2"), "RELEASED"))
    release = browser.find_element(By.ID, "release")
    assert "reason: false positive: backup job" in release.text
    assert len(release.find_elements(By.CSS_SELECTOR, "ol.steps li")) >= 1
    assert "failed" not in [item.text.split()[0] for item in release.find_elements(By.CSS_SELECTOR, "li")]
    # And there is nothing left to release
    assert browser.find_elements(By.ID, "release-open") == []
    assert browser.find_element(By.ID, "error").text == ""

    if os.environ.get("UPDATE_SCREENSHOT"):
        browser.set_window_size(1400, 1700)  # the timeline and its release in one picture
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(ROOT / "docs" / "console-release.png"))
        browser.set_window_size(1400, 900)


def test_a_deployed_page_says_how_to_release_from_the_cli(served: ServedDemo, browser: Any) -> None:
    # Given an isolated instance and the page at a deployed API's address (release needs SigV4 there)
    isolation_id = _isolate(served, "no-profile", "deployed page")
    base = f"http://{DEPLOYED_HOST}:{served.url.rsplit(':', 1)[1]}"

    # When its timeline is opened
    wait = _open_timeline(browser, base, served.key, isolation_id)
    wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#release pre")))

    # Then it offers no button but the CLI command that releases it, with this API's address
    assert browser.find_elements(By.ID, "release-open") == []
    command = browser.find_element(By.CSS_SELECTOR, "#release pre").text
    assert command == f"ec2-isolation release {isolation_id} --api {base} --wait"
    assert "AWS credentials" in browser.find_element(By.ID, "release").text
