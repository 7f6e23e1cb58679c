"""Fixtures of the chat tests: alice, bob and carol exist; each fixture is a token."""

import pytest


@pytest.fixture
def alice(make_user, token_for):
    make_user("alice")
    return token_for("alice")


@pytest.fixture
def bob(make_user, token_for):
    make_user("bob")
    return token_for("bob")


@pytest.fixture
def carol(make_user, token_for):
    make_user("carol")
    return token_for("carol")
