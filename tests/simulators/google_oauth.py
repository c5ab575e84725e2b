"""Google's OAuth2 token endpoint (JWT-bearer grant) and test service accounts for it.

`make_service_account(sim)` returns a service-account JSON dict whose `token_uri` points at the
simulator, so google-auth's `service_account.Credentials` refreshes offline; the simulator checks
the assertion's RS256 signature with the account's public key and mints a fresh access token.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import secrets
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = [
    "GOOGLE_TOKEN_URI",
    "JWT_BEARER",
    "ServiceAccountKey",
    "TokenError",
    "check_assertion",
    "make_service_account",
    "parse_token_form",
]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# google-auth always signs for Google's own endpoint, whatever `token_uri` says.
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
_accounts = itertools.count(1)


@dataclass(frozen=True)
class ServiceAccountKey:
    client_email: str
    public_key: rsa.RSAPublicKey


class _HasAccounts(Protocol):
    service_accounts: dict[str, ServiceAccountKey]

    def base(self, provider: str) -> str: ...


class TokenError(Exception):
    """An OAuth2 error answer: `{"error": code, "error_description": description}`."""

    def __init__(self, code: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.code, "error_description": self.description}


def make_service_account(
    sim: _HasAccounts, *, label: str = "vertex", project_id: str = "sim-project"
) -> dict[str, Any]:
    """A fresh RSA service account registered with `sim`; `token_uri` = `{sim.base(label)}/token`.

    Write it to a file for `GOOGLE_APPLICATION_CREDENTIALS`, or pass it to
    `service_account.Credentials.from_service_account_info`.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    n = next(_accounts)
    email = f"sim-{n}@{project_id}.iam.gserviceaccount.com"
    key_id = secrets.token_hex(20)
    sim.service_accounts[key_id] = ServiceAccountKey(email, key.public_key())
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": email,
        "client_id": str(100000000000000000000 + n),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": f"{sim.base(label)}/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}",
        "universe_domain": "googleapis.com",
    }


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def parse_token_form(body: bytes) -> dict[str, str]:
    form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    if form.get("grant_type") != JWT_BEARER:
        raise TokenError("unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type')}")
    if not form.get("assertion"):
        raise TokenError("invalid_request", "Missing required parameter: assertion")
    return form


def check_assertion(
    assertion: str, audience: str, accounts: dict[str, ServiceAccountKey]
) -> dict[str, Any]:
    """The verified JWT claims, or `TokenError` as Google words it."""
    try:
        head_b64, claims_b64, sig_b64 = assertion.split(".")
        header = orjson.loads(_b64(head_b64))
        claims = orjson.loads(_b64(claims_b64))
        signature = _b64(sig_b64)
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        raise TokenError("invalid_grant", "Invalid JWT: malformed assertion") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("invalid_grant", "Invalid JWT: malformed assertion")
    if header.get("alg") != "RS256":
        raise TokenError("invalid_grant", "Invalid JWT: only RS256 is accepted")
    account = accounts.get(str(header.get("kid")))
    if account is None:
        account = next((a for a in accounts.values() if a.client_email == claims.get("iss")), None)
    if account is None or account.client_email != claims.get("iss"):
        raise TokenError("invalid_grant", "Invalid grant: account not found")
    try:
        account.public_key.verify(
            signature,
            f"{head_b64}.{claims_b64}".encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except InvalidSignature:
        raise TokenError("invalid_grant", "Invalid JWT Signature.") from None
    if claims.get("aud") not in (audience, GOOGLE_TOKEN_URI):
        raise TokenError(
            "invalid_grant", f"Invalid JWT: audience {claims.get('aud')!r} is not {audience!r}"
        )
    now = time.time()
    iat, exp = claims.get("iat"), claims.get("exp")
    if (
        not isinstance(iat, int | float)
        or not isinstance(exp, int | float)
        or exp <= now
        or iat > now + 300
        or exp - iat > 3600
    ):
        raise TokenError(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
            "timeframe. Check your iat and exp values in the JWT claim.",
        )
    return claims
