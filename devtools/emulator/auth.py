"""Request signatures as Binance and Kraken compute them, so the emulator can check the real
client's: any difference in what is signed makes the venue refuse the request."""

from __future__ import annotations

import base64
import hashlib
import hmac


def binance_signature(secret: str, payload: str) -> str:
    """HMAC-SHA256 of the query string (or form body) before `&signature=`, hex encoded."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def kraken_signature(secret: str, path: str, nonce: str, body: bytes) -> str:
    """HMAC-SHA512, keyed with the base64-decoded secret, of the URI path followed by
    SHA256(nonce + POST data); base64 encoded. Raises ValueError for a secret that is not base64."""
    digest = hashlib.sha256(nonce.encode() + body).digest()
    mac = hmac.new(base64.b64decode(secret, validate=True), path.encode() + digest, hashlib.sha512)
    return base64.b64encode(mac.digest()).decode()


def same(expected: str, given: str) -> bool:
    """Constant-time comparison, so a caller cannot learn a signature byte by byte."""
    return hmac.compare_digest(expected.encode(), given.encode())
