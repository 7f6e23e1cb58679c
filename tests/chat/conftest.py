"""Fixtures of the chat tests: alice, bob and carol exist, each fixture a token; pairs of
daphne processes on one Redis (the rooms across processes)."""

import pytest
from django.conf import settings


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


@pytest.fixture(params=["core", "pubsub"])
def two_servers(request, daphne_server, redis_url):
    """Two processes on one Redis, with each of the two channel layers (REDIS_LAYER)."""
    env = {"REDIS_URL": redis_url, "REDIS_LAYER": request.param,
           "HUB_HEARTBEAT_SECONDS": "1", "HUB_DEAD_AFTER_SECONDS": "3",
           "WS_RATE_LIMIT": "0"}  # the ordering test sends in bursts
    return daphne_server(**env), daphne_server(**env)


@pytest.fixture
def people(make_user, token_for):
    """Tokens of alice, bob and carol (plain users)."""
    for name in ("alice", "bob", "carol"):
        make_user(name)
    return {name: token_for(name) for name in ("alice", "bob", "carol")}


@pytest.fixture
def servers_on_this_layer(daphne_server, redis_url):
    """Two processes on the channel layer this test process uses, so that it can publish
    to them itself (as the admin or a script does)."""
    env = {"REDIS_URL": redis_url, "REDIS_LAYER": settings.REDIS_LAYER,
           "HUB_HEARTBEAT_SECONDS": "1", "HUB_DEAD_AFTER_SECONDS": "3"}
    return daphne_server(**env), daphne_server(**env)
