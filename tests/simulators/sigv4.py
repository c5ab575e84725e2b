"""Check an AWS SigV4 `Authorization` header the way AWS does, recomputing it with botocore.

The region is read from the credential scope (`Credential=AKID/20250101/us-east-1/bedrock/…`),
since the simulator's host is 127.0.0.1. The canonical request uses the raw request-target as
sent (botocore double-encodes the path, e.g. `%3A` -> `%253A`), exactly the headers the client
listed in SignedHeaders, and the SHA-256 of the body actually received.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

from .errors import Invalid

__all__ = ["TEST_ACCESS_KEY", "TEST_SECRET_KEY", "verify_sigv4"]

TEST_ACCESS_KEY = "AKIDEXAMPLE"
TEST_SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<sig>[0-9a-fA-F]+)\s*$"
)
_SKEW = dt.timedelta(minutes=5)
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation "
    "for details."
)


def _refuse(kind: str, message: str, status: int = 403) -> Invalid:
    return Invalid(message, status=status, kind=kind)


def verify_sigv4(
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: Mapping[str, str],
    *,
    service: str = "bedrock",
    region: str | None = None,
    now: dt.datetime | None = None,
) -> str:
    """Return the signed region, or raise `Invalid` (403 + AWS error type in `kind`)."""
    auth = headers.get("authorization", "")
    if not auth:
        raise _refuse("MissingAuthenticationTokenException", "Missing Authentication Token")
    match = _AUTH.match(auth)
    if match is None:
        raise _refuse(
            "IncompleteSignatureException",
            f"Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' "
            f"parameters. Authorization={auth[:40]}",
        )
    scope = match["cred"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise _refuse("IncompleteSignatureException", f"Credential is malformed: {match['cred']}")
    access_key, date, signed_region, signed_service, _ = scope
    secret = credentials.get(access_key)
    if secret is None:
        raise _refuse(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    if signed_service != service:
        raise _refuse(
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: '{service}'. ",
        )
    if region is not None and signed_region != region:
        raise _refuse(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region, not '{signed_region}'. ",
        )
    amz_date = headers.get("x-amz-date", "")
    try:
        when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise _refuse(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ) from None
    if amz_date[:8] != date:
        raise _refuse(
            "InvalidSignatureException",
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{date}' != '{amz_date[:8]}', from '{amz_date}'.",
        )
    current = now or dt.datetime.now(dt.UTC)
    if abs(current - when) > _SKEW:
        stamp = current.strftime("%Y%m%dT%H%M%SZ")
        raise _refuse(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than {stamp} ({stamp} - 5 min.)",
        )
    signed = match["signed"].lower().split(";")
    if "host" not in signed:
        raise _refuse(
            "InvalidSignatureException", "'Host' must be a 'SignedHeader' in the AWS Authorization."
        )
    if any(name not in headers for name in signed):
        raise _refuse("InvalidSignatureException", _MISMATCH)
    body_hash = hashlib.sha256(body).hexdigest()
    claimed = headers.get("x-amz-content-sha256")
    if claimed is not None and claimed != body_hash:
        raise _refuse(
            "XAmzContentSHA256Mismatch",
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
            status=400,
        )
    token = headers.get("x-amz-security-token")
    signer = SigV4Auth(Credentials(access_key, secret, token), signed_service, signed_region)
    url = f"http://{headers['host']}{target}"
    request = AWSRequest(method=method, url=url, data=body)
    request.context["timestamp"] = amz_date
    header_map = HTTPHeaders()
    for name in signed:
        header_map[name] = headers[name]
    canonical = "\n".join(
        [
            method.upper(),
            signer._normalize_url_path(urlsplit(url).path),
            signer.canonical_query_string(request),
            signer.canonical_headers(header_map) + "\n",
            ";".join(signed),
            body_hash,
        ]
    )
    string_to_sign = signer.string_to_sign(request, canonical)
    expected = signer.signature(string_to_sign, request)
    if not hmac.compare_digest(expected, match["sig"].lower()):
        raise _refuse(
            "InvalidSignatureException",
            f"{_MISMATCH}\n\nThe Canonical String for this request should have been\n"
            f"'{canonical}'\n\nThe String-to-Sign should have been\n'{string_to_sign}'\n",
        )
    return signed_region
