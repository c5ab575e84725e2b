"""Request signing for providers that authenticate the request itself (AWS SigV4 for Bedrock).

Pure functions: the caller passes the clock and the credentials and merges the returned headers
into the request it sends. The result matches ``botocore.auth.SigV4Auth.add_auth`` (the reference
``tests/test_signing.py`` compares against) header for header:

- every header passed in is signed except the hop-by-hop/tracing ones botocore skips, plus
  ``host`` (derived from the URL as the HTTP client will send it, unless passed);
- the URL must be the exact one that goes on the wire: the canonical URI is its path after
  dot-segment removal, percent-encoded once more (so ``%3A`` in the URL is signed as ``%253A``,
  a raw ``:`` as ``%3A``), which is what AWS recomputes from the path it receives;
- no ``x-amz-content-sha256`` is added (botocore only sends it for S3 or unsigned payloads); if
  the caller passes one, its value stands for the payload hash, as in botocore.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import SplitResult, quote, unquote_to_bytes, urlsplit

__all__ = ["SIGNERS", "sign", "sign_sigv4"]

SIGNERS: frozenset[str] = frozenset({"sigv4"})

_ALGORITHM = "AWS4-HMAC-SHA256"
# botocore.auth.SIGNED_HEADERS_BLACKLIST: headers proxies and clients add or rewrite in transit.
_UNSIGNED_HEADERS = frozenset(
    {
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 3986 unreserved characters: the only ones left unencoded in a canonical query.
_QUERY_SAFE = "-_.~"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _host(parts: SplitResult) -> str:
    # As the HTTP client sends it: lowercase, no userinfo, port only when not the default.
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


def _canonical_uri(path: str) -> str:
    # RFC 3986 dot-segment removal; AWS (unlike RFC 3986) also drops empty segments ("//").
    if not path:
        return "/"
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    normalized = "/".join(segments)
    if path[0] == "/":
        normalized = "/" + normalized
    if path[-1] == "/" and segments:
        normalized += "/"
    # Encoded once more on purpose: non-S3 services sign the double-encoded path.
    return quote(normalized, safe="/~")


def _canonical_query(query: str) -> str:
    if not query:
        return ""
    pairs: list[tuple[str, str]] = []
    for item in query.split("&"):
        key, _, value = item.partition("=")
        # Decode then encode in the canonical form, so an already canonical query (what
        # botocore builds) is unchanged and any other spelling signs as AWS will read it.
        # Bytes, not str: an escape that is not UTF-8 must survive as is.
        pairs.append(
            (
                quote(unquote_to_bytes(key), safe=_QUERY_SAFE),
                quote(unquote_to_bytes(value), safe=_QUERY_SAFE),
            )
        )
    pairs.sort()
    return "&".join(f"{k}={v}" for k, v in pairs)


def sign_sigv4(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    access_key_id: str,
    secret_access_key: str,
    session_token: str | None,
    region: str,
    service: str,
    now: datetime,
) -> dict[str, str]:
    """AWS Signature Version 4 of one request: the headers to add to it (lowercase names).

    ``x-amz-date`` (or ``date`` when the request already carries a ``Date`` header, as botocore
    does), ``x-amz-security-token`` when ``session_token`` is set, and ``authorization``.
    Existing ``authorization``/``x-amz-date`` headers (and ``x-amz-security-token`` when a token is
    set) are replaced, so re-signing a retried request works; merge case-insensitively.
    """
    if now.tzinfo is None:
        # A naive local time would sign with the wrong clock and fail as an opaque 403.
        raise ValueError("now must be a timezone-aware datetime")
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    signed, payload_hash, has_date = _headers_to_sign(headers, bool(session_token))
    added: dict[str, str] = {}
    if has_date:
        # botocore keeps a caller's Date header (re-dated to the signing time) instead of
        # adding X-Amz-Date; AWS accepts either.
        added["date"] = formatdate(int(now.timestamp()))
    else:
        added["x-amz-date"] = stamp
    if session_token:
        added["x-amz-security-token"] = session_token
    for lname, value in added.items():
        signed[lname] = [value]
    parts = urlsplit(url)
    signed.setdefault("host", [_host(parts)])

    names = sorted(signed)
    signed_headers = ";".join(names)
    # Trimall: collapse runs of whitespace; repeated headers join with commas.
    canonical_headers = "".join(
        f"{n}:{','.join(' '.join(v.split()) for v in signed[n])}\n" for n in names
    )
    canonical_request = "\n".join(
        (
            method.upper(),
            _canonical_uri(parts.path),
            _canonical_query(parts.query),
            canonical_headers,
            signed_headers,
            payload_hash if payload_hash is not None else hashlib.sha256(body).hexdigest(),
        )
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    signature = _signature(secret_access_key, day, scope, stamp, canonical_request)
    added["authorization"] = (
        f"{_ALGORITHM} Credential={access_key_id}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
    return added


def _headers_to_sign(
    headers: Mapping[str, str], with_token: bool
) -> tuple[dict[str, list[str]], str | None, bool]:
    """(lowercase name -> values to sign, a given x-amz-content-sha256, whether a Date header
    was given). The headers the signature replaces are left out."""
    replaced = {"authorization", "x-amz-date"}
    if with_token:
        replaced.add("x-amz-security-token")
    signed: dict[str, list[str]] = {}
    payload_hash: str | None = None
    has_date = False
    for name, value in headers.items():
        lname = name.lower()
        if lname in replaced or lname in _UNSIGNED_HEADERS:
            continue
        if lname == "date":
            has_date = True  # re-dated by the caller
            continue
        if lname == "x-amz-content-sha256":
            payload_hash = value
        signed.setdefault(lname, []).append(value)
    return signed, payload_hash, has_date


def _signature(secret: str, day: str, scope: str, stamp: str, canonical_request: str) -> str:
    string_to_sign = "\n".join(
        (_ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest())
    )
    region, service = scope.split("/")[1:3]
    key = _hmac(f"AWS4{secret}".encode(), day)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def _text(mapping: Mapping[str, Any], key: str, what: str) -> str:
    value = mapping.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"sigv4 signing needs {what} {key!r} (missing or empty)")
    return value


def sign(
    spec: Mapping[str, Any],
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: Mapping[str, str],
    now: datetime,
) -> dict[str, str]:
    """Sign a request as a mapping's rendered ``request.signing`` spec says; returns the headers
    to add. ``spec["type"]`` is one of ``SIGNERS``."""
    kind = spec.get("type")
    if kind == "sigv4":
        return sign_sigv4(
            method=method,
            url=url,
            headers=headers,
            body=body,
            access_key_id=_text(credentials, "access_key_id", "credential"),
            secret_access_key=_text(credentials, "secret_access_key", "credential"),
            session_token=credentials.get("session_token") or None,
            region=_text(spec, "region", "signing field"),
            service=_text(spec, "service", "signing field"),
            now=now,
        )
    raise ValueError(f"unknown signing type {kind!r}; expected one of {', '.join(sorted(SIGNERS))}")
