"""engine.signing: SigV4 headers equal botocore's ``SigV4Auth.add_auth`` output (the reference)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from unittest import mock
from urllib.parse import quote

import botocore.auth
import botocore.session
import httpx
import pytest
import yarl
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import percent_encode_sequence
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.engine.signing import SIGNERS, sign, sign_sigv4

NOW = datetime.datetime(2025, 9, 30, 23, 59, 58, tzinfo=datetime.UTC)
AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJGMEQCIA=="
MODEL_IDS = [
    "anthropic.claude-sonnet-4-5-20250929-v1:0",
    "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
    "us.amazon.nova-micro-v1:0",
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-7-sonnet-20250219-v1:0",
    "arn:aws:bedrock:eu-west-1::foundation-model/amazon.titan-text-express-v1",
]


@contextmanager
def botocore_clock(now: datetime.datetime) -> Iterator[None]:
    # SigV4Auth.add_auth reads the clock through botocore.auth.get_current_datetime (a naive
    # UTC datetime), imported into botocore.auth's namespace: pin it there.
    naive = now.astimezone(datetime.UTC).replace(tzinfo=None)
    with mock.patch.object(botocore.auth, "get_current_datetime", lambda *a, **k: naive):
        yield


def botocore_sign(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    token: str | None,
    region: str,
    service: str = "bedrock",
    now: datetime.datetime = NOW,
    params: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The headers botocore adds or replaces, lowercased."""
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body, params=params)
    with botocore_clock(now):
        SigV4Auth(Credentials(AKID, SECRET, token), service, region).add_auth(request)
    signer_owned = {"authorization", "date", "x-amz-date", "x-amz-security-token"}
    after = list(request.headers.items())
    # Nothing else is touched...
    assert [(k, v) for k, v in after if k.lower() not in signer_owned] == [
        (k, v) for k, v in headers.items() if k.lower() not in signer_owned
    ]
    # ...and a signer-owned header passed in and left as is (a token without a session token)
    # is not something the signer adds.
    kept = {(k.lower(), v) for k, v in headers.items()}
    return {
        k.lower(): v for k, v in after if k.lower() in signer_owned and (k.lower(), v) not in kept
    }


def ours(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    token: str | None,
    region: str,
    service: str = "bedrock",
    now: datetime.datetime = NOW,
) -> dict[str, str]:
    return sign_sigv4(
        method=method, url=url, headers=headers, body=body, access_key_id=AKID,
        secret_access_key=SECRET, session_token=token, region=region, service=service, now=now,
    )  # fmt: skip


def model_path(model: str, op: str) -> str:
    # How botocore (and the Bedrock mapping) puts the model id in the path: every reserved
    # character percent-encoded, ``:`` as %3A and ``/`` as %2F.
    return f"/model/{quote(model, safe='')}/{op}"


# --- properties against botocore ----------------------------------------------------------------

_model_ids = st.one_of(
    st.sampled_from(MODEL_IDS),
    st.from_regex(r"\A[a-z]{2,6}\.[a-z0-9-]{1,30}(-v[0-9]:[0-9]{1,3})?\Z"),
    st.from_regex(
        r"\Aarn:aws:bedrock:[a-z0-9-]{0,12}:[0-9]{0,12}:[a-z-]{1,20}/[a-z0-9.:-]{1,40}\Z"
    ),
)
_regions = st.one_of(
    st.sampled_from(["us-east-1", "us-west-2", "eu-central-1", "ap-northeast-1"]),
    st.from_regex(r"\A[a-z]{2}-[a-z]{4,9}-[1-9]\Z"),
)
_query_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_header_names = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}\Z").filter(
    lambda n: (
        n not in {"host", "date", "authorization", "x-amz-date", "x-amz-content-sha256"}
        and not n.startswith("x-amz-security")
    )
)
# Printable ASCII with runs of spaces: checks the trimall rule without inventing encodings.
_header_values = st.from_regex(r"\A[ -~]{0,30}\Z")


@settings(max_examples=200, deadline=None)
@given(
    model=_model_ids,
    op=st.sampled_from(["converse", "converse-stream", "invoke", "invoke-with-response-stream"]),
    query=st.lists(st.tuples(_query_text, _query_text), max_size=4),
    region=_regions,
    token=st.one_of(st.none(), st.just(TOKEN), st.from_regex(r"\A[A-Za-z0-9+/=]{1,60}\Z")),
    body=st.binary(max_size=500),
    extra=st.dictionaries(_header_names, _header_values, max_size=4),
    method=st.sampled_from(["POST", "GET", "post"]),
)
def test_matches_botocore(
    model: str,
    op: str,
    query: list[tuple[str, str]],
    region: str,
    token: str | None,
    body: bytes,
    extra: dict[str, str],
    method: str,
) -> None:
    url = f"https://bedrock-runtime.{region}.amazonaws.com{model_path(model, op)}"
    if query:
        url += "?" + percent_encode_sequence(query)  # as botocore renders a query string
    headers = {"content-type": "application/json", **extra}
    expected = botocore_sign(
        method=method, url=url, headers=headers, body=body, token=token, region=region
    )
    assert ours(method=method, url=url, headers=headers, body=body, token=token, region=region) == (
        expected
    )


# Raw query text: anything but the characters that delimit a query (or start an escape), and
# control characters (urlsplit drops tabs and newlines).
_raw_query_text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"], exclude_characters="&=%#"),
    max_size=12,
)


@settings(max_examples=100, deadline=None)
@given(
    query=st.dictionaries(_raw_query_text, _raw_query_text, max_size=4),
    path=st.from_regex(r"\A(/[a-zA-Z0-9._~:@!$&'()*+,;=-]{0,8}){0,5}/?\Z"),
)
def test_raw_query_and_path_match_botocore_params(query: dict[str, str], path: str) -> None:
    # A query written raw in the URL (unicode, spaces, reserved characters) signs as botocore
    # signs the same query given as params: each name and value URI-encoded, then sorted.
    base = f"https://example.amazonaws.com{path}"
    raw_url = base + "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else base
    kw: dict[str, Any] = {"method": "GET", "headers": {}, "body": b"", "token": None,
                          "region": "us-east-1", "service": "service"}  # fmt: skip
    assert ours(url=raw_url, **kw) == botocore_sign(url=base, params=query or None, **kw)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.amazonaws.com",
        "https://example.amazonaws.com/",
        "https://example.amazonaws.com/a/./b/../c//d/",
        "https://example.amazonaws.com/../..",
        "https://example.amazonaws.com/a%2Fb/%3A/%7E~/ሴ/space%20x",
        "https://EXAMPLE.amazonaws.com:443/x",
        "http://example.amazonaws.com:80/x",
        "https://example.amazonaws.com:8443/x",
        "http://[::1]:9000/model/a%3A0/converse",
        "https://user:pw@example.amazonaws.com/x?b=2&a=1&a=0&c&=e",
    ],
)
def test_url_edge_cases_match_botocore(url: str) -> None:
    kw: dict[str, Any] = {"method": "POST", "url": url, "body": b"{}", "token": None,
                          "region": "us-east-1"}  # fmt: skip
    headers = {"Content-Type": "application/json"}
    assert ours(headers=headers, **kw) == botocore_sign(headers=headers, **kw)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Host": "override.example.com"},
        {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"},
        {"Authorization": "stale", "X-Amz-Date": "19990101T000000Z"},
        {"X-Amz-Security-Token": "stale-token"},
        {"User-Agent": "turnout", "Connection": "keep-alive", "traceparent": "00-ab-cd-01"},
        {"Accept": "application/vnd.amazon.eventstream", "X-Amzn-Bedrock-Trace": "ENABLED"},
        {"X-Multi": "a", "x-multi": "b"},
        {"Date": "Mon, 01 Jan 2001 00:00:00 GMT"},
    ],
)
@pytest.mark.parametrize("token", [None, TOKEN])
def test_header_handling_matches_botocore(headers: dict[str, str], token: str | None) -> None:
    kw: dict[str, Any] = {"method": "POST", "body": b'{"messages":[]}', "token": token,
                          "region": "eu-west-3",
                          "url": "https://bedrock-runtime.eu-west-3.amazonaws.com"
                          + model_path(MODEL_IDS[0], "converse")}  # fmt: skip
    assert ours(headers=headers, **kw) == botocore_sign(headers=headers, **kw)


def test_time_zones_and_dates() -> None:
    url = "https://bedrock-runtime.us-east-1.amazonaws.com/model/x/converse"
    paris = datetime.timezone(datetime.timedelta(hours=2))
    local = datetime.datetime(2025, 10, 1, 1, 59, 58, tzinfo=paris)  # == NOW, another day locally
    kw: dict[str, Any] = {"method": "POST", "url": url, "headers": {}, "body": b"", "token": None,
                          "region": "us-east-1"}  # fmt: skip
    assert ours(now=local, **kw) == ours(now=NOW, **kw) == botocore_sign(now=NOW, **kw)
    assert ours(now=NOW, **kw)["x-amz-date"] == "20250930T235958Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        ours(now=datetime.datetime(2025, 1, 1), **kw)  # naive: the point of the test


def test_real_bedrock_client_request() -> None:
    """What botocore's own bedrock-runtime client sends for ConverseStream, captured before the
    network: the same URL, headers and signature as ours over the same bytes."""
    client = botocore.session.get_session().create_client(
        "bedrock-runtime", region_name="us-west-2", aws_access_key_id=AKID,
        aws_secret_access_key=SECRET, aws_session_token=TOKEN,
    )  # fmt: skip
    captured: dict[str, Any] = {}

    class Captured(Exception):
        pass

    def before_send(request: Any, **_: Any) -> None:
        captured.update(url=request.url, headers=dict(request.headers), body=request.body)
        raise Captured

    client.meta.events.register("before-send", before_send)
    model = MODEL_IDS[3]
    with botocore_clock(NOW), pytest.raises(Captured):
        client.converse_stream(
            modelId=model, messages=[{"role": "user", "content": [{"text": "hi"}]}]
        )
    sent = {
        k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in captured["headers"].items()
    }
    url = "https://bedrock-runtime.us-west-2.amazonaws.com" + model_path(model, "converse-stream")
    assert captured["url"] == url
    # botocore sends no x-amz-content-sha256 for Bedrock, and signs exactly these headers.
    assert "x-amz-content-sha256" not in sent
    assert (
        "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token," in sent["authorization"]
    )
    added = ours(method="POST", url=url, headers={"content-type": sent["content-type"]},
                 body=captured["body"], token=TOKEN, region="us-west-2")  # fmt: skip
    assert added == {k: sent[k] for k in ("x-amz-date", "x-amz-security-token", "authorization")}


def test_recommended_url_survives_both_http_clients() -> None:
    # The signature covers the path as sent. httpx keeps a URL's escapes, but aiohttp (the
    # gateway's transport) requotes through yarl, which decodes %3A to ':'. A model id rendered
    # with ':' raw and '/' as %2F goes on the wire unchanged through both, so the path signed is
    # the path AWS sees.
    for model in MODEL_IDS:
        path = f"/model/{quote(model, safe=':')}/converse-stream"
        url = f"https://bedrock-runtime.us-east-1.amazonaws.com{path}"
        assert httpx.URL(url).raw_path.decode() == path
        assert yarl.URL(url).raw_path == path


# --- AWS's published SigV4 examples (independent of botocore) -----------------------------------

_AWS_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
_AWS_NOW = datetime.datetime(2015, 8, 30, 12, 36, 0, tzinfo=datetime.UTC)


def test_aws_suite_get_vanilla() -> None:
    added = sign_sigv4(
        method="GET", url="https://example.amazonaws.com/", headers={}, body=b"",
        access_key_id="AKIDEXAMPLE", secret_access_key=_AWS_SECRET, session_token=None,
        region="us-east-1", service="service", now=_AWS_NOW,
    )  # fmt: skip
    assert added == {
        "x-amz-date": "20150830T123600Z",
        "authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/"
        "aws4_request, SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
    }


def test_aws_docs_iam_list_users() -> None:
    added = sign_sigv4(
        method="GET", url="https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, body=b"",
        access_key_id="AKIDEXAMPLE", secret_access_key=_AWS_SECRET, session_token=None,
        region="us-east-1", service="iam", now=_AWS_NOW,
    )  # fmt: skip
    assert added["authorization"].endswith(
        "SignedHeaders=content-type;host;x-amz-date, "
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
    )


# --- sign(): the mapping-facing dispatcher ------------------------------------------------------


def test_signers() -> None:
    assert frozenset({"sigv4"}) == SIGNERS


_URL = "https://bedrock-runtime.us-east-1.amazonaws.com" + model_path(MODEL_IDS[1], "converse")
_SPEC = {"type": "sigv4", "service": "bedrock", "region": "us-east-1"}
_CREDS = {"access_key_id": AKID, "secret_access_key": SECRET}


def test_sign_dispatches_to_sigv4() -> None:
    headers = {"content-type": "application/json"}
    kw: dict[str, Any] = {"method": "POST", "url": _URL, "headers": headers, "body": b"{}"}
    got = sign(_SPEC, credentials={**_CREDS, "session_token": TOKEN}, now=NOW, **kw)
    assert got == botocore_sign(token=TOKEN, region="us-east-1", **kw)
    # An empty session token (an unset optional credential) means none.
    got = sign(_SPEC, credentials={**_CREDS, "session_token": ""}, now=NOW, **kw)
    assert got == botocore_sign(token=None, region="us-east-1", **kw)
    assert "x-amz-security-token" not in got


def test_sign_errors() -> None:
    kw: dict[str, Any] = {"method": "POST", "url": _URL, "headers": {}, "body": b"", "now": NOW}
    with pytest.raises(ValueError, match=r"unknown signing type 'hmac'; expected one of sigv4"):
        sign({"type": "hmac"}, credentials=_CREDS, **kw)
    with pytest.raises(ValueError, match="credential 'secret_access_key'"):
        sign(_SPEC, credentials={"access_key_id": AKID}, **kw)
    with pytest.raises(ValueError, match="signing field 'region'"):
        sign({**_SPEC, "region": ""}, credentials=_CREDS, **kw)
