"""``realtime.tokens``: HS256 only, required claims, expired versus invalid."""

import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from django.test import override_settings

from realtime import tokens
from tests.realtime.support import forge, raw_token, unsigned

# HS512 with the test secret is signed on purpose: it must be refused, weak key or not.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


def now() -> int:
    return int(time.time())


def test_issue_and_decode_round_trip():
    """A freshly issued token decodes to its username and its expiry."""
    token, expires_at = tokens.issue("alice", ttl=120)
    claims = tokens.decode(token)
    assert claims.user_id == "alice"
    assert claims.expires_at == expires_at
    assert timedelta(seconds=118) <= expires_at - datetime.now(UTC) <= timedelta(seconds=120)


def test_issued_token_is_hs256_with_the_three_claims():
    """An issued token is signed HS256 and carries user_id, iat and exp."""
    token, _ = tokens.issue("alice")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == {"user_id", "iat", "exp"}
    assert payload["exp"] - payload["iat"] == 3600


@override_settings(JWT_TTL=42)
def test_default_ttl_follows_the_setting():
    """Without a ttl the lifetime is JWT_TTL, read at call time."""
    payload = jwt.decode(tokens.issue("alice")[0], options={"verify_signature": False})
    assert payload["exp"] - payload["iat"] == 42


def test_expired_token_names_its_user():
    """A validly signed token past its exp raises ExpiredToken with the user it names."""
    token = forge({"user_id": "ghost", "iat": now() - 100, "exp": now() - 10})
    with pytest.raises(tokens.ExpiredToken) as info:
        tokens.decode(token)
    assert info.value.user_id == "ghost"


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: forge({"user_id": "a", "iat": now(), "exp": now() + 60},
                                   key="not-the-secret-" + "z" * 40), id="bad-signature"),
        pytest.param(lambda: unsigned({"user_id": "a", "iat": now(), "exp": now() + 60}),
                     id="alg-none"),
        pytest.param(lambda: forge({"user_id": "a", "iat": now(), "exp": now() + 60},
                                   algorithm="HS512"), id="hs512"),
        pytest.param(lambda: raw_token({"alg": "RS256", "typ": "JWT"},
                                       {"user_id": "a", "iat": now(), "exp": now() + 60}),
                     id="rs256-header"),
        pytest.param(lambda: forge({"iat": now(), "exp": now() + 60}), id="no-user_id"),
        pytest.param(lambda: forge({"user_id": "a", "exp": now() + 60}), id="no-iat"),
        pytest.param(lambda: forge({"user_id": "a", "iat": now()}), id="no-exp"),
        pytest.param(lambda: forge({"user_id": "a", "exp": now() - 60}), id="expired-no-iat"),
        pytest.param(lambda: forge({"user_id": 7, "iat": now(), "exp": now() + 60}),
                     id="user_id-not-a-string"),
        pytest.param(lambda: forge({"user_id": "", "iat": now(), "exp": now() + 60}),
                     id="user_id-empty"),
        pytest.param(lambda: forge({"user_id": "a", "iat": now(), "exp": "soon"}),
                     id="exp-not-a-number"),
        pytest.param(lambda: forge({"user_id": "a", "iat": now(), "exp": str(now() + 60)}),
                     id="exp-numeric-string"),
        pytest.param(lambda: forge({"user_id": "a", "iat": now(), "exp": 10**20}),
                     id="exp-out-of-range"),
        pytest.param(lambda: forge({"user_id": "a", "iat": now(), "exp": 1e300}),
                     id="exp-huge-float"),
        pytest.param(lambda: "not.a.token", id="garbage"),
        pytest.param(lambda: "", id="empty"),
        pytest.param(lambda: "\ud800.\udfff.x", id="lone-surrogates"),
        pytest.param(lambda: "é" * 30, id="non-ascii"),
    ],
)
def test_invalid_tokens_raise_invalid_token(make):
    """Every malformed, unsigned, foreign-algorithm or claim-less token raises InvalidToken."""
    with pytest.raises(tokens.InvalidToken):
        tokens.decode(make())


def test_raw_token_helper_makes_a_valid_hs256_token():
    """The hand-made token helper is sound: with alg HS256 its token is accepted."""
    token = raw_token({"alg": "HS256", "typ": "JWT"},
                      {"user_id": "a", "iat": now(), "exp": now() + 60})
    assert tokens.decode(token).user_id == "a"


def test_secret_comes_from_jwt_secret():
    """A token signed with SECRET_KEY instead of JWT_SECRET is refused when they differ."""
    from django.conf import settings

    assert settings.JWT_SECRET != settings.SECRET_KEY
    token = forge({"user_id": "a", "iat": now(), "exp": now() + 60}, key=settings.SECRET_KEY)
    with pytest.raises(tokens.InvalidToken):
        tokens.decode(token)
