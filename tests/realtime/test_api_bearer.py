"""``realtime.api.bearer_username``: the Bearer check every API edge shares.

A token that passed once is remembered, but never beyond what decoding it
again would say: its expiry is checked on every use, and a changed
``JWT_SECRET`` makes it invalid at once.
"""

import pytest

from realtime import api, tokens


def refused(header: str) -> tuple[str, str]:
    with pytest.raises(api.ApiError) as caught:
        api.bearer_username(header)
    return caught.value.code, caught.value.message


def test_a_valid_token_names_its_user():
    assert api.bearer_username("Bearer " + tokens.issue("ann")[0]) == "ann"
    assert api.bearer_username("bearer  " + tokens.issue("ann")[0] + " ") == "ann"


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer ", "Token x"])
def test_a_header_that_is_not_bearer_is_401(header):
    assert refused(header) == ("unauthorized", "Authorization must be 'Bearer <token>'")


def test_bad_and_expired_tokens_are_401():
    assert refused("Bearer garbage") == ("unauthorized", "token is invalid")
    assert refused("Bearer " + tokens.issue("ann", -5)[0]) == ("unauthorized",
                                                                "token has expired")


def test_a_remembered_token_still_expires(monkeypatch):
    """Accepted once, the same token is refused once its exp has passed."""
    token, expires_at = tokens.issue("ann", 60)
    assert api.bearer_username("Bearer " + token) == "ann"
    later = expires_at.timestamp()
    monkeypatch.setattr(api.time, "time", lambda: later)
    assert refused("Bearer " + token) == ("unauthorized", "token has expired")


def test_a_remembered_token_is_invalid_under_another_secret(settings):
    token, _ = tokens.issue("ann", 60)
    assert api.bearer_username("Bearer " + token) == "ann"
    settings.JWT_SECRET = "another-secret-" + "z" * 40
    assert refused("Bearer " + token) == ("unauthorized", "token is invalid")

