"""The responders' client without a network: `release` signed with SigV4 for a deployed API (checked
against an independent computation of the signature), the key alone for a local one, and what
`release --wait` prints and exits with. The API is a fake `urlopen` answering by route."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from local_stack import arguments, cli, client
from local_stack.signing import deployed_region

DEPLOYED = "https://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/prod"
LOCAL = "http://127.0.0.1:8080"
ISOLATION = "iso-0123456789abcdef0123456789abcdef"
ACCESS_KEY, SECRET_KEY, TOKEN = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token"


class FakeApi:
    """`urllib.request.urlopen` answering from a script: (method, path) -> a list of bodies, in turn."""

    def __init__(self, answers: dict[tuple[str, str], list[Any]]) -> None:
        self.answers = answers
        self.sent: list[urllib.request.Request] = []

    def __call__(self, request: urllib.request.Request, timeout: float = 0) -> Any:
        self.sent.append(request)
        bodies = self.answers[(request.get_method(), urlsplit(request.full_url).path)]
        body = bodies.pop(0) if len(bodies) > 1 else bodies[0]
        return _Response(json.dumps(body).encode())


class _Response(io.BytesIO):
    def __enter__(self) -> _Response:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """The caller's credentials in the environment, the first link of the default chain."""
    _no_aws_configuration(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)


def _no_aws_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def fake_api(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[dict[tuple[str, str], list[Any]]], FakeApi]]:
    def install(answers: dict[tuple[str, str], list[Any]]) -> FakeApi:
        fake = FakeApi(answers)
        monkeypatch.setattr(urllib.request, "urlopen", fake)
        return fake

    yield install


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = client.run(arguments.parser().parse_args(list(argv)), out)
    return status, out.getvalue()


def _record(status: str, release: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "isolation_id": ISOLATION,
        "status": status,
        "source": "webhook",
        "instance_id": "i-0123456789abcdef0",
        "account_id": "111122223333",
        "region": "eu-west-1",
        "attempts": 1,
        "created_at": "2026-11-29T10:00:00.000Z",
        "contained_at": "2026-11-29T10:00:00.400Z",
        "released_at": "2026-11-29T10:05:01.500Z" if status == "RELEASED" else None,
        "steps": [
            {
                "name": "swap-security-groups",
                "status": "done",
                "detail": "2 interfaces",
                "at": "2026-11-29T10:00:00.400Z",
            }
        ],  # fmt: skip
        "release": release,
    }


RELEASE = {
    "requested_by": "arn:aws:sts::111122223333:assumed-role/Responder/alice",
    "reason": "false positive",
    "requested_at": "2026-11-29T10:05:00.000Z",
    "steps": [
        {
            "name": "restore-security-groups",
            "status": "done",
            "detail": "eni-1: sg-1",
            "at": "2026-11-29T10:05:01.000Z",
        }
    ],  # fmt: skip
    "error": None,
}
ACCEPTED = {"isolation_id": ISOLATION, "status": "RELEASING", "status_url": f"/isolations/{ISOLATION}"}


def _expected_signature(request: urllib.request.Request, signed: list[str], amz_date: str) -> str:
    """SigV4 as AWS documents it, computed here without botocore: the oracle for the client's header."""
    url = urlsplit(request.full_url)
    sent = {name.lower(): value for name, value in request.header_items()} | {"host": str(url.netloc)}
    canonical = "\n".join(
        [
            request.get_method(),
            url.path,
            url.query,
            "".join(f"{name}:{' '.join(sent[name].split())}\n" for name in signed),
            ";".join(signed),
            hashlib.sha256(request.data or b"").hexdigest(),  # type: ignore[arg-type]
        ]
    )
    scope = f"{amz_date[:8]}/eu-west-1/execute-api/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + SECRET_KEY).encode()
    for part in (amz_date[:8], "eu-west-1", "execute-api", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_a_release_on_a_deployed_api_is_signed_for_execute_api_in_its_region(
    credentials: None, fake_api: Callable[..., FakeApi]
) -> None:
    # Given a deployed API (an execute-api address) and the caller's credentials in the default chain
    api = fake_api({("POST", f"/prod/isolations/{ISOLATION}/release"): [ACCEPTED]})

    # When a responder releases an isolation
    status, out = run(
        "release", ISOLATION, "--reason", "false positive", "--api", DEPLOYED, "--api-key", "k1"
    )

    # Then one request went out, with the key and a SigV4 signature scoped to execute-api in eu-west-1
    assert status == 0 and f"{ISOLATION} RELEASING" in out
    [request] = api.sent
    headers = {name.lower(): value for name, value in request.header_items()}
    assert headers["x-api-key"] == "k1" and headers["x-amz-security-token"] == TOKEN
    assert json.loads(request.data) == {"reason": "false positive"}  # type: ignore[arg-type]
    found = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=([^,]+), SignedHeaders=([^,]+), Signature=([0-9a-f]{64})",
        headers["authorization"],
    )
    assert found, headers["authorization"]
    credential, signed, signature = found.groups()
    amz_date = headers["x-amz-date"]
    assert credential == f"{ACCESS_KEY}/{amz_date[:8]}/eu-west-1/execute-api/aws4_request"
    # And the key, the body's type, the host and the session token are signed, all of them really sent
    names = signed.split(";")
    assert {"host", "x-amz-date", "x-amz-security-token", "x-api-key", "content-type"} <= set(names)
    assert all(name == "host" or name in headers for name in names)
    # And the signature is the one AWS computes for exactly this request
    assert signature == _expected_signature(request, names, amz_date)


def test_reads_of_a_deployed_api_and_a_local_release_send_the_key_only(
    credentials: None, fake_api: Callable[..., FakeApi]
) -> None:
    # Given a deployed API and a local one
    api = fake_api(
        {
            ("GET", f"/prod/isolations/{ISOLATION}"): [_record("ISOLATED")],
            ("POST", f"/isolations/{ISOLATION}/release"): [ACCEPTED],
        }
    )

    # When a record is read from the deployed one, and an isolation released on the local one
    assert run("status", ISOLATION, "--api", DEPLOYED, "--api-key", "k1")[0] == 0
    assert run("release", ISOLATION, "--api", LOCAL, "--api-key", "k2")[0] == 0

    # Then neither is signed: a read needs the key only, and the local stack checks the key only
    for request, key in zip(api.sent, ("k1", "k2"), strict=True):
        headers = {name.lower(): value for name, value in request.header_items()}
        assert headers["x-api-key"] == key
        assert "authorization" not in headers and "x-amz-date" not in headers


def test_a_deployed_release_without_credentials_exits_2_saying_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, fake_api: Callable[..., FakeApi], capsys: Any
) -> None:
    # Given no AWS credentials anywhere in the default chain
    _no_aws_configuration(monkeypatch, tmp_path)
    api = fake_api({})

    # When a release is asked of a deployed API
    status = client.main(
        arguments.parser().parse_args(["release", ISOLATION, "--api", DEPLOYED, "--api-key", "k"])
    )

    # Then nothing is sent and the command exits 2 naming what is missing
    assert status == 2 and api.sent == []
    assert "no AWS credentials" in capsys.readouterr().err


def test_a_release_denied_by_the_apis_iam_authorization_exits_2_with_its_message(
    credentials: None, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # Given a deployed API whose resource policy denies the caller (API Gateway says `Message`)
    denied = "User: arn:aws:sts::111122223333:assumed-role/Dev/bob is not authorized to perform: execute-api:Invoke"

    def refuse(request: urllib.request.Request, timeout: float = 0) -> Any:
        body = io.BytesIO(json.dumps({"Message": denied}).encode())
        raise urllib.error.HTTPError(request.full_url, 403, "Forbidden", {}, body)  # type: ignore[arg-type]

    monkeypatch.setattr(urllib.request, "urlopen", refuse)

    # When the caller releases
    status = client.main(
        arguments.parser().parse_args(["release", ISOLATION, "--api", DEPLOYED, "--api-key", "k"])
    )

    # Then it exits 2 with API Gateway's own words
    assert status == 2 and denied in capsys.readouterr().err


@pytest.mark.parametrize(("ends", "exit_status"), [("RELEASED", 0), ("RELEASE_FAILED", 1)])
def test_release_wait_follows_the_release_steps_and_exits_by_its_outcome(
    fake_api: Callable[..., FakeApi], monkeypatch: pytest.MonkeyPatch, ends: str, exit_status: int
) -> None:
    # Given a release that runs, then ends RELEASED or RELEASE_FAILED
    monkeypatch.setattr(client, "POLL_SECONDS", 0.0)
    release = RELEASE | (
        {"error": {"code": "Superseded", "message": "isolated again"}} if ends != "RELEASED" else {}
    )
    fake_api(
        {
            ("POST", f"/isolations/{ISOLATION}/release"): [ACCEPTED],
            ("GET", f"/isolations/{ISOLATION}"): [
                _record("RELEASING", RELEASE | {"steps": []}),
                _record(ends, release),
            ],
        }
    )

    # When the responder releases and waits
    status, out = run("release", ISOLATION, "--wait", "--api", LOCAL, "--api-key", "k")

    # Then the release's steps are shown after the isolation's, and the exit status is its outcome's
    assert status == exit_status
    assert re.search(r"done\s+restore-security-groups: eni-1: sg-1\s+\(release\)", out), out
    assert out.index("swap-security-groups") < out.index("restore-security-groups")
    assert f"{ends} i-0123456789abcdef0 (released in" in out
    assert ("Superseded" in out) == (ends != "RELEASED")


def test_status_shows_the_release_part_of_a_record(fake_api: Callable[..., FakeApi]) -> None:
    # Given a released record
    fake_api({("GET", f"/isolations/{ISOLATION}"): [_record("RELEASED", RELEASE)]})

    # When its status is shown
    status, out = run("status", ISOLATION, "--api", LOCAL, "--api-key", "k")

    # Then it exits 0 and says who released it, why, in how long, with the release's steps
    assert status == 0
    assert (
        "release: requested 2026-11-29T10:05:00.000Z by arn:aws:sts::111122223333:assumed-role/Responder/alice"
        in out
    )
    assert "(1.50 s)" in out and "reason: false positive" in out and "restore-security-groups" in out


def test_status_names_the_record_that_released_an_earlier_record_of_its_episode(
    fake_api: Callable[..., FakeApi],
) -> None:
    # Given an earlier record of a released episode (no release of its own)
    releasing = "iso-" + "b" * 32
    fake_api({("GET", f"/isolations/{ISOLATION}"): [_record("RELEASED") | {"released_by": releasing}]})

    # When its status is shown
    status, out = run("status", ISOLATION, "--api", LOCAL, "--api-key", "k")

    # Then it says when and by which record it was released
    assert status == 0
    assert f"released 2026-11-29T10:05:01.500Z with its episode, by {releasing}" in out, out


@pytest.mark.parametrize(
    ("url", "region"),
    [
        (DEPLOYED, "eu-west-1"),
        ("https://abc123.execute-api.cn-north-1.amazonaws.com.cn/v1", "cn-north-1"),
        ("https://abc123.execute-api.us-gov-west-1.amazonaws.com/", "us-gov-west-1"),
        ("http://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/prod", None),  # not https: not AWS
        ("https://isolation.example.com/prod", None),
        ("https://evil.example.com/a1b2.execute-api.eu-west-1.amazonaws.com", None),
        (LOCAL, None),
    ],
)
def test_a_deployed_api_is_known_by_its_execute_api_address(url: str, region: str | None) -> None:
    assert deployed_region(url) == region


def test_an_api_url_without_a_scheme_exits_2_saying_it_needs_one(capsys: pytest.CaptureFixture[str]) -> None:
    # When a responder gives the API as host:port
    status = cli.main(["list", "--api", "127.0.0.1:8080", "--api-key", "k"])

    # Then it exits 2 saying the URL needs http:// or https://, with the URL it would be
    assert status == 2
    err = capsys.readouterr().err
    assert "needs http:// or https://" in err and "http://127.0.0.1:8080" in err


def test_help_describes_the_client_and_the_local_stack(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "client of an ec2-isolation API, deployed" in text and "--api URL and --api-key KEY" in text
    assert "the local stack: the whole service on embedded AWS" in text


def test_a_record_that_ended_with_no_step_does_not_promise_steps(fake_api: Callable[..., FakeApi]) -> None:
    # Given a record that failed before its first step (the role could not be assumed)
    failed = _record("FAILED") | {
        "steps": [],
        "contained_at": None,
        "error": {"code": "RoleNotAssumable", "message": "cannot assume"},
    }
    fake_api({("GET", f"/isolations/{ISOLATION}"): [failed]})

    # When its status is shown
    status, out = run("status", ISOLATION, "--api", LOCAL, "--api-key", "k")

    # Then it says there are no steps, not that some are to come
    assert status == 1
    assert "steps: none\n" in out and "none yet" not in out and "RoleNotAssumable" in out


def test_step_columns_line_up_whatever_the_outcome(fake_api: Callable[..., FakeApi]) -> None:
    # Given a dry run whose steps have every outcome, `unverified` the longest
    steps = [
        {"name": f"step-{status}", "status": status, "detail": "d", "at": "2026-11-29T10:00:00.400Z"}
        for status in ("would", "unverified", "already", "skipped", "failed", "done")
    ]
    fake_api({("GET", f"/isolations/{ISOLATION}"): [_record("CHECKED") | {"steps": steps, "dry_run": True}]})

    # When its status is shown
    _, out = run("status", ISOLATION, "--api", LOCAL, "--api-key", "k")

    # Then every step's name starts in the same column
    columns = {line.index("step-") for line in out.splitlines() if "step-" in line}
    assert len(columns) == 1, out


def test_a_dry_run_is_told_apart_in_the_list_and_its_status(fake_api: Callable[..., FakeApi]) -> None:
    # Given a real isolation that failed and a dry run that failed the same way, and one that checked
    refused = {"steps": [], "contained_at": None, "error": {"code": "RoleNotAssumable", "message": "no"}}
    real = _record("FAILED") | refused
    dry = _record("FAILED") | refused | {"isolation_id": "iso-" + "d" * 32, "dry_run": True}
    checked = _record("CHECKED") | {"isolation_id": "iso-" + "c" * 32, "dry_run": True, "contained_at": None}
    fake_api({
        ("GET", "/isolations"): [{"items": [real, dry, checked], "next": None}],
        ("GET", f"/isolations/{dry['isolation_id']}"): [dry],
    })  # fmt: skip

    # When they are listed, and the failed dry run's status is shown
    _, listed = run("list", "--api", LOCAL, "--api-key", "k")
    _, shown = run("status", dry["isolation_id"], "--api", LOCAL, "--api-key", "k")

    # Then the dry runs' rows say so where a real one says how long its containment took
    rows = {line.split()[0]: line for line in listed.splitlines()[1:]}
    assert "dry run" not in rows[ISOLATION], listed
    assert "dry run" in rows[dry["isolation_id"]] and "dry run" in rows[checked["isolation_id"]], listed
    # And the status says nothing was changed, promising no containment
    assert "(dry run)" in shown and "dry run: nothing changed" in shown and "contained" not in shown, shown


# --- exemptions ------------------------------------------------------------------------------------------

EXEMPTION = {
    "exemption_id": "exm-0123456789abcdef0123456789abcdef",
    "account_id": "111122223333",
    "instance_id": "i-0123456789abcdef0",
    "reason": "load test of the payment service",
    "expires_at": "2026-12-10T18:00:00.000Z",
    "created_at": "2026-12-04T10:00:00.000Z",
    "requested_by": "arn:aws:sts::111122223333:assumed-role/Responder/alice",
}


def _signed_for_execute_api(request: urllib.request.Request) -> bool:
    headers = {name.lower(): value for name, value in request.header_items()}
    found = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=([^,]+), SignedHeaders=([^,]+), Signature=([0-9a-f]{64})",
        headers.get("authorization", ""),
    )
    if not found:
        return False
    credential, signed, signature = found.groups()
    amz_date = headers["x-amz-date"]
    return credential == f"{ACCESS_KEY}/{amz_date[:8]}/eu-west-1/execute-api/aws4_request" and (
        signature == _expected_signature(request, signed.split(";"), amz_date)
    )


def test_exempt_and_unexempt_on_a_deployed_api_are_signed(
    credentials: None, fake_api: Callable[..., FakeApi]
) -> None:
    # Given a deployed API
    api = fake_api(
        {
            ("POST", "/prod/exemptions"): [EXEMPTION],
            ("DELETE", f"/prod/exemptions/{EXEMPTION['exemption_id']}"): [None],
        }
    )

    # When a responder exempts an instance, then ends the exemption
    status, out = run(
        "exempt", "i-0123456789abcdef0", "--account", "111122223333", "--reason", "load test",
        "--until", "2026-12-10T18:00:00Z", "--api", DEPLOYED, "--api-key", "k1",
    )  # fmt: skip
    assert status == 0
    assert EXEMPTION["exemption_id"] in out and "until 2026-12-10T18:00:00.000Z" in out
    status, out = run("unexempt", str(EXEMPTION["exemption_id"]), "--api", DEPLOYED, "--api-key", "k1")
    assert status == 0 and "deleted" in out

    # Then both requests were SigV4-signed for execute-api in the API's region, with the key
    create, delete = api.sent
    assert json.loads(create.data) == {  # type: ignore[arg-type]
        "account_id": "111122223333",
        "instance_id": "i-0123456789abcdef0",
        "reason": "load test",
        "expires_at": "2026-12-10T18:00:00Z",
    }
    assert delete.get_method() == "DELETE"
    for request in (create, delete):
        assert _signed_for_execute_api(request)


def test_exemptions_are_listed_as_a_table_or_json(fake_api: Callable[..., FakeApi]) -> None:
    # Given an API with one active exemption in the account
    api = fake_api({("GET", "/exemptions"): [{"items": [EXEMPTION]}]})

    # When they are listed (of the account), for a person and for a script
    status, table = run("exemptions", "--account", "111122223333", "--api", LOCAL, "--api-key", "k")
    assert status == 0
    _, as_json = run("exemptions", "--json", "--api", LOCAL, "--api-key", "k")

    # Then the table has the exemption, its instance, end and reason; the JSON is the API's answer
    header, row = table.splitlines()
    assert header.split()[:4] == ["exemption", "account", "instance", "until"]
    for value in ("exemption_id", "instance_id", "expires_at", "reason"):
        assert str(EXEMPTION[value]) in row
    assert json.loads(as_json) == {"items": [EXEMPTION]}
    assert urlsplit(api.sent[0].full_url).query == "account_id=111122223333"
    # And nothing is signed on a read, or on a local API
    assert all("authorization" not in {n.lower() for n, _ in r.header_items()} for r in api.sent)


def test_no_active_exemption_says_so(fake_api: Callable[..., FakeApi]) -> None:
    fake_api({("GET", "/exemptions"): [{"items": []}]})
    assert run("exemptions", "--api", LOCAL, "--api-key", "k") == (0, "no active exemption\n")


def test_an_exemption_the_api_refuses_exits_2_naming_the_first(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # Given an instance exempted already (the API answers 409 naming the first)
    said = f"instance i-0123456789abcdef0 of account 111122223333 is exempt already by {EXEMPTION['exemption_id']}"

    def refuse(request: urllib.request.Request, timeout: float = 0) -> Any:
        body = {
            "message": said,
            "errors": [{"field": "instance_id", "type": "exempt_already", "message": said}],
        }
        raise urllib.error.HTTPError(
            request.full_url, 409, "Conflict", {}, io.BytesIO(json.dumps(body).encode())
        )  # type: ignore[arg-type]

    monkeypatch.setattr(urllib.request, "urlopen", refuse)

    # When a second exemption is asked for, or an unknown one deleted
    argv = ["exempt", "i-0123456789abcdef0", "--account", "111122223333", "--reason", "x", "--until", "7d"]
    status = client.main(arguments.parser().parse_args([*argv, "--api", LOCAL, "--api-key", "k"]))

    # Then it exits 2 with the API's words
    assert status == 2 and str(EXEMPTION["exemption_id"]) in capsys.readouterr().err


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("2026-12-10T18:00:00Z", "2026-12-10T18:00:00Z"),
        ("2026-12-10", "2026-12-10T00:00:00Z"),
        ("7d", "2026-12-11T10:00:00Z"),
        ("12h", "2026-12-04T22:00:00Z"),
    ],
)
def test_until_takes_a_time_a_date_or_a_duration(given: str, sent: str) -> None:
    from datetime import UTC, datetime

    assert client.until(given, now=datetime(2026, 12, 4, 10, 0, tzinfo=UTC)) == sent


@pytest.mark.parametrize("given", ["tomorrow", "2026-13-01", "2026-12-10T18:00:00+02:00", "7w"])
def test_until_that_is_not_a_time_is_a_usage_error(given: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        arguments.parser().parse_args(
            ["exempt", "i-0123456789abcdef0", "--account", "111122223333", "--reason", "x", "--until", given]
        )
    assert exited.value.code == 2 and "--until" in capsys.readouterr().err


def test_a_local_api_key_is_never_read_as_an_option() -> None:
    # Given the keys the local stack generates (a key starting with "-" once made the client's own
    # `--api-key KEY` fail: "expected one argument")
    from local_stack.stack import new_api_key

    keys = {new_api_key() for _ in range(2000)}

    # Then each is shaped as API Gateway generates one, and the client's parser takes it as the key
    assert all(re.fullmatch(r"[A-Za-z0-9]{40}", key) for key in keys)
    for key in list(keys)[:200]:
        parsed = arguments.parser().parse_args(["list", "--api", LOCAL, "--api-key", key])
        assert parsed.api_key == key
