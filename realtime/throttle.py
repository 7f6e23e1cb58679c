"""The login throttle that every password check goes through (PROTOCOL.md "Identity").

After ``LOGIN_MAX_FAILURES`` failures within ``LOGIN_FAILURE_WINDOW`` for one
username or one client address, every attempt for it is refused, the right
password included, until a window has passed since the last failure.

Checking the counters, checking the password and recording a failure are three
steps: parallel requests that all check before any of them records would each
get a password check. So an attempt first *reserves* a place: under a short
lock per counter (``cache.add``, atomic in Redis and in the local-memory cache)
it is refused when the failures of the window plus the attempts still in flight
reach the limit; once the password is checked, the reservation is replaced by
a failure, or dropped. At most ``LOGIN_MAX_FAILURES`` passwords are checked
however many requests arrive at once (a few parallel attempts may be refused
that a sequential client would have had checked: the safe side).

Counters live in Django's cache: Redis when ``REDIS_URL`` is set (shared by
every process), else per process. Usernames are keyed by their SHA-256 digest.
"""

import hashlib
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from time import monotonic, sleep

from django.conf import settings
from django.core.cache import cache

#: A lock is held for a few cache calls; one left by a dead process expires after this.
LOCK_SECONDS = 5
#: How long a waiter tries to get the locks before it refuses the attempt.
LOCK_WAIT_SECONDS = LOCK_SECONDS + 1
#: A reservation whose attempt never settled (its process died) is dropped after this.
PENDING_SECONDS = 60

MESSAGE = "too many failed logins; try again in 5 minutes"


def keys_for(username: str, address: str | None) -> list[str]:
    """The counters an attempt counts against: its username, and its address if known."""
    # surrogatepass: a JSON body may carry lone surrogates; the key must not crash on them.
    digest = hashlib.sha256(username.encode("utf-8", "surrogatepass")).hexdigest()
    keys = [f"login-failures:user:{digest}"]
    if address:
        keys.append(f"login-failures:addr:{address}")
    return keys


def blocked(stamps: list[float], now: float) -> bool:
    """``LOGIN_MAX_FAILURES`` failures within one window, the last one less than a window ago.

    The block lasts a whole window after the *last* failure (PROTOCOL.md), not after
    the first of them.
    """
    if not stamps:
        return False
    window, last = settings.LOGIN_FAILURE_WINDOW, max(stamps)
    if now - last >= window:
        return False
    return sum(1 for s in stamps if s > last - window) >= settings.LOGIN_MAX_FAILURES


def reserve(keys: list[str]) -> str | None:
    """A reservation for one password check, or ``None`` when the attempt is refused."""
    now = time.time()
    token = secrets.token_hex(8)
    with _locked(keys) as states:
        if states is None:
            return None
        for state in states.values():
            recent = sum(1 for s in state["failures"] if s > now - settings.LOGIN_FAILURE_WINDOW)
            if (blocked(state["failures"], now)
                    or recent + len(state["pending"]) >= settings.LOGIN_MAX_FAILURES):
                return None
        for state in states.values():
            state["pending"][token] = now + PENDING_SECONDS
    return token


def settle(keys: list[str], token: str, *, failed: bool) -> None:
    """End reservation ``token``; ``failed`` records a failure in its place."""
    now = time.time()
    with _locked(keys) as states:
        if states is None:
            return  # the reservation expires by itself
        for state in states.values():
            state["pending"].pop(token, None)
            if failed:
                state["failures"].append(now)


@contextmanager
def _locked(keys: list[str]) -> Iterator[dict[str, dict] | None]:
    """The counters of ``keys``, locked, written back on exit (``None``: no lock in time)."""
    owned: list[str] = []
    deadline = monotonic() + LOCK_WAIT_SECONDS
    pause = 0.001
    try:
        for key in sorted(keys):  # one order everywhere: no deadlock
            while not cache.add(key + ":lock", 1, timeout=LOCK_SECONDS):
                if monotonic() > deadline:
                    yield None
                    return
                sleep(pause)
                pause = min(pause * 2, 0.02)
            owned.append(key)
        now = time.time()
        found = cache.get_many(keys)
        states = {key: _fresh(found.get(key), now) for key in keys}
        yield states
        cache.set_many(states, timeout=max(settings.LOGIN_FAILURE_WINDOW, PENDING_SECONDS))
    finally:
        cache.delete_many([key + ":lock" for key in owned])


def _fresh(state, now: float) -> dict:
    """A counter without what no longer matters: old failures, dead reservations.

    A failure counts until a window after the last one, which may be up to a
    window from now: so failures are kept for two windows.
    """
    if not isinstance(state, dict):
        state = {}
    cutoff = now - 2 * settings.LOGIN_FAILURE_WINDOW
    return {
        "failures": [s for s in state.get("failures", []) if s > cutoff],
        "pending": {t: d for t, d in state.get("pending", {}).items() if d > now},
    }
