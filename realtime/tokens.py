"""JSON Web Tokens: the only place that signs or decodes one.

Tokens are HS256, signed with ``settings.JWT_SECRET`` (``SECRET_KEY`` when unset),
and carry ``user_id`` (the username), ``iat`` and ``exp``. Any other algorithm,
``alg: none`` included, and any missing claim make a token invalid.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from django.conf import settings

from realtime.protocol import untrusted_json

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["user_id", "exp", "iat"]


class TokenError(Exception):
    """The token cannot be used."""


class ExpiredToken(TokenError):
    """Validly signed, but past its ``exp``."""

    def __init__(self, user_id: str | None) -> None:
        super().__init__("token has expired")
        self.user_id = user_id


class InvalidToken(TokenError):
    """Bad signature, wrong algorithm, malformed, or a claim missing."""


@dataclass(frozen=True)
class Claims:
    user_id: str
    expires_at: datetime


def issue(username: str, ttl: int | None = None) -> tuple[str, datetime]:
    """Sign a token for ``username``, valid ``ttl`` seconds (``JWT_TTL`` by default)."""
    issued_at = datetime.now(UTC).replace(microsecond=0)
    expires_at = issued_at + timedelta(seconds=settings.JWT_TTL if ttl is None else ttl)
    payload = {"user_id": username, "iat": issued_at, "exp": expires_at}
    return jwt.encode(payload, settings.JWT_SECRET, algorithm=ALGORITHM), expires_at


def decode(token: str) -> Claims:
    """Verify ``token`` and return its claims; raise ``ExpiredToken`` or ``InvalidToken``."""
    try:
        # PyJWT parses the header's JSON before it checks the signature.
        with untrusted_json(token):
            payload = jwt.decode(
                token,
                settings.JWT_SECRET,
                algorithms=[ALGORITHM],
                options={"require": REQUIRED_CLAIMS},
            )
    except jwt.ExpiredSignatureError:
        # The signature was checked before the expiry, so the claims can be trusted
        # enough to say whom the expired token named.
        unverified = jwt.decode(token, options={"verify_signature": False})
        user_id = unverified.get("user_id")
        raise ExpiredToken(user_id if isinstance(user_id, str) else None) from None
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from None
    except UnicodeError:
        # A str token with lone surrogates (from a JSON ``auth`` frame) cannot be encoded.
        raise InvalidToken("token is not ASCII") from None
    user_id = payload["user_id"]
    if not isinstance(user_id, str) or not user_id:
        raise InvalidToken("user_id must be a non-empty string")
    exp = payload["exp"]
    # PyJWT also takes a numeric string or a bool for ``exp``; a datetime needs a number
    # that fits the platform's time_t.
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise InvalidToken("exp must be a number")
    try:
        expires_at = datetime.fromtimestamp(exp, UTC)
    except (OverflowError, OSError, ValueError):
        raise InvalidToken("exp is out of range") from None
    return Claims(user_id, expires_at)
