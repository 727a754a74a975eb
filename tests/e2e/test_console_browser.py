"""The status page in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium), against `serve`: the key from the URL fragment, the list, one isolation's timeline,
attacker-controlled text shown as text, a release from the timeline, and, on a deployed API's address
(mapped to the local stack by the browser's resolver), how to release from the CLI instead. `make test`
installs the browser when it can; without it these tests are skipped, saying how to install it.

The pictures docs/responders.md shows, docs/console.png and docs/console-release.png, are taken here on
every run, from a stack of their own with a realistic story (isolations by three sources, a failure, a
dry run, then a release), so they cannot go stale: commit them when they change. The hostile-text test
has its own stack and never writes them."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.helpers import ROOT, ServedDemo, put_event, serve_demo

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
def story() -> Iterator[ServedDemo]:
    """A stack of its own for the README's pictures: nothing hostile in its list."""
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


def _call(served: ServedDemo, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        served.url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"x-api-key": served.key, "content-type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def _settled(served: ServedDemo, isolation_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        record: dict[str, Any] = _call(served, f"/isolations/{isolation_id}")
        if record["status"] not in ("QUEUED", "IN_PROGRESS", "RELEASING") or time.monotonic() > deadline:
            return record
        time.sleep(0.2)


def _isolate(
    served: ServedDemo,
    label: str,
    reason: str,
    *,
    requested_by: str = HOSTILE,
    account: int = 0,
    **extra: Any,
) -> str:
    instance = served.demo.instance(label, account=account)
    body = {"instance_id": instance.instance_id, "account_id": instance.account_id, "region": instance.region,
            "reason": reason, "requested_by": requested_by, **extra}  # fmt: skip
    isolation_id = str(_call(served, "/isolate", body)["isolation_id"])
    _settled(served, isolation_id)
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


def test_a_wrong_key_says_so(served: ServedDemo, browser: Any) -> None:
    browser.get(f"{served.url}/console#key=not-the-key")
    WebDriverWait(browser, 20).until(
        expected_conditions.text_to_be_present_in_element((By.ID, "error"), "missing or wrong")
    )


def test_the_page_lists_the_active_exemptions(served: ServedDemo, browser: Any) -> None:
    # Given the demo's exempt instances (exempted in the stack's own table by --seed-demo)
    exempt = [served.demo.instance("exempt", account=account) for account in (0, 1)]

    # When a responder opens the page
    browser.get(f"{served.url}/console#key={served.key}")

    # Then its exemptions section lists them, with their reason and end
    wait = WebDriverWait(browser, 20)
    for instance in exempt:
        wait.until(
            expected_conditions.text_to_be_present_in_element((By.ID, "exemptions"), instance.instance_id)
        )
    section = browser.find_element(By.ID, "exemptions").text
    assert "demo:" in section and " UTC" in section
    assert browser.find_element(By.ID, "no-exemptions").get_attribute("hidden")


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


def test_an_isolation_that_ended_before_its_first_step_promises_none(
    served: ServedDemo, browser: Any
) -> None:
    # Given an isolation in an account that never deployed the execution role: FAILED before any step
    body = {"instance_id": "i-0123456789abcdef0", "account_id": "111122223333", "region": served.demo.region}
    isolation_id = str(_call(served, "/isolate", body)["isolation_id"])
    assert _settled(served, isolation_id)["error"]["code"] == "RoleNotAssumable"

    # When a responder opens its link
    browser.get(f"{served.url}/console#key={served.key}&isolation={isolation_id}")
    wait = WebDriverWait(browser, 20)
    wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "detail"), "RoleNotAssumable"))

    # Then its timeline and prior state say it ended without them, not that they are still to come
    detail = browser.find_element(By.ID, "detail").text
    assert "No step: it ended before its first." in detail, detail
    assert "Not described: it ended before the instance was read." in detail, detail
    assert "yet" not in detail, detail


# --- the README's pictures, from a realistic story --------------------------------------------------

#: A laptop's screen.
LAPTOP = (1366, 900)


def _recorded(served: ServedDemo, count: int) -> list[dict[str, Any]]:
    """The newest `count` records once none of them is in flight."""
    deadline = time.monotonic() + 90
    while True:
        items: list[dict[str, Any]] = _call(served, "/isolations?limit=20")["items"]
        settled = [r for r in items if r["status"] not in ("QUEUED", "IN_PROGRESS", "RELEASING")]
        if (len(items) >= count and len(settled) == len(items)) or time.monotonic() > deadline:
            return items
        time.sleep(0.3)


def test_the_readmes_pictures_show_a_responders_page(story: ServedDemo, browser: Any) -> None:
    from local_stack.sample_events import guardduty_finding, tag_change
    from tests.e2e.helpers import member_clients

    # Given a morning's story: a webhook isolation (an instance in an Auto Scaling group, behind load
    # balancers), a GuardDuty finding and an isolate=true tag in another account, an isolation that
    # failed (no such instance), and a dry run
    webhook = _isolate(story, "web-asg", "EDR: outbound C2 beaconing to 203.0.113.50",
                       requested_by="soc-oncall@example.com")  # fmt: skip
    finding = story.demo.instance("ipv6-1")
    import boto3

    administrator = str(boto3.client("sts").get_caller_identity()["Account"])
    put_event(guardduty_finding(account_id=finding.account_id, region=finding.region,
                                 instance_id=finding.instance_id, administrator_account=administrator))  # fmt: skip
    tagged = story.demo.instance("web-1", account=1)
    ec2, _ = member_clients(tagged)
    ec2.create_tags(Resources=[tagged.instance_id], Tags=[{"Key": "isolate", "Value": "true"}])
    put_event(tag_change(account_id=tagged.account_id, region=tagged.region, instance_id=tagged.instance_id))
    web3 = story.demo.instance("web-3")
    failed = str(_call(story, "/isolate", {"instance_id": "i-0badc0ffee0d15ea5", "account_id": web3.account_id,
                 "region": web3.region, "reason": "INC-4711: host named in the phishing report",
                 "requested_by": "soc-oncall@example.com"})["isolation_id"])  # fmt: skip
    checked = _isolate(story, "web-3", "rehearsal before the change window", requested_by="alice@example.com",
                       dry_run=True)  # fmt: skip
    records = {r["isolation_id"]: r for r in _recorded(story, 5)}
    assert {r["source"] for r in records.values()} >= {"webhook", "guardduty", "tag"}, records
    assert records[webhook]["status"] == "ISOLATED" and records[failed]["status"] == "FAILED", records
    assert records[checked]["status"] == "CHECKED", records

    # When a responder follows a link to the webhook isolation, the key in it, at a laptop's width
    browser.set_window_size(*LAPTOP)
    browser.get(f"{story.url}/console#key={story.key}&isolation={webhook}")
    wait = WebDriverWait(browser, 20)
    wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "detail"), "swap-security-groups"))
    wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "count-failed"), "1"))

    # Then the fragment left the address bar at once, the page says a key is set and never shows it
    assert "#" not in browser.current_url, browser.current_url
    assert "key set" in browser.find_element(By.ID, "key-state").text
    assert story.key not in browser.find_element(By.TAG_NAME, "body").text
    assert browser.find_element(By.ID, "key").get_attribute("value") == ""
    # And the linked isolation is open, with its timeline, and a link to it that holds no key
    detail = browser.find_element(By.ID, "detail")
    assert webhook in detail.text and "Timeline" in detail.text
    link = browser.find_element(By.ID, "link").get_attribute("value")
    assert link == f"{story.url}/console#isolation={webhook}"
    # And the counts say what is isolated now, in flight and failed
    assert [browser.find_element(By.ID, f"count-{name}").text for name in ("isolated", "active", "failed")] == [
        "3", "0", "1"]  # fmt: skip

    # And a dry run does not look like an isolation, a failure stands out with its code, and the reason is
    # in the list
    def badge(isolation_id: str) -> Any:
        return browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{isolation_id}"] .badge')

    colour = "return getComputedStyle(arguments[0]).backgroundColor"
    assert browser.execute_script(colour, badge(checked)) != browser.execute_script(colour, badge(webhook))
    checked_row = browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{checked}"]')
    assert "dry run" in checked_row.text.lower() and "dry-row" in checked_row.get_attribute("class")
    failed_row = browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{failed}"]')
    assert "failed-row" in failed_row.get_attribute("class") and "InstanceNotFound" in failed_row.text
    assert (
        "EDR: outbound C2 beaconing" in browser.find_element(By.CSS_SELECTOR, f'tr[data-id="{webhook}"]').text
    )
    # And nothing is wider than a laptop's screen, and the list stays clear of the timeline beside it
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    right_of_list = "return document.querySelector('table').getBoundingClientRect().right"
    assert browser.execute_script(right_of_list) <= detail.rect["x"], "the list runs under the timeline"

    browser.save_screenshot(str(ROOT / "docs" / "console.png"))

    # When the webhook isolation is released from its timeline
    wait.until(expected_conditions.element_to_be_clickable((By.ID, "release-open"))).click()
    wait.until(expected_conditions.presence_of_element_located((By.ID, "release-reason"))).send_keys(
        "false positive: the beacon was the backup agent"
    )
    browser.find_element(By.ID, "release-confirm").click()
    WebDriverWait(browser, 60).until(
        expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, "#detail h2"), "RELEASED")
    )

    # Then the timeline and the whole release are in one picture
    height = browser.execute_script(
        "return document.getElementById('release').getBoundingClientRect().bottom + window.scrollY"
    )
    browser.set_window_size(LAPTOP[0], int(height) + 180)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(ROOT / "docs" / "console-release.png"))
    browser.set_window_size(*LAPTOP)
