"""Pacing large answers (``drain``) and the per-address budget of costly ones (issue 18, 4)."""

import asyncio
from types import SimpleNamespace

import pytest

from realtime import limits
from realtime.limits import AddressBudget, drain


class Conn:
    """What ``drain`` reads of a connection: a scripted backlog."""

    def __init__(self, *backlog: int) -> None:
        self.backlog = list(backlog)
        self.closing = False
        self.reads = 0

    def unsent_bytes(self) -> int:
        self.reads += 1
        return self.backlog.pop(0) if len(self.backlog) > 1 else self.backlog[0]


async def test_drain_returns_at_once_below_half_the_bound(settings):
    settings.WS_MAX_SEND_BUFFER_BYTES = 1000
    assert await drain(Conn(500)) is True


async def test_drain_waits_while_the_client_keeps_taking(settings):
    settings.WS_MAX_SEND_BUFFER_BYTES = 1000
    conn = Conn(5000, 4000, 3000, 2000, 1000, 400)
    assert await drain(conn, stall_seconds=60) is True
    assert conn.reads == 6


async def test_drain_gives_up_on_a_client_that_takes_nothing(settings, monkeypatch):
    settings.WS_MAX_SEND_BUFFER_BYTES = 1000
    monkeypatch.setattr(limits, "DRAIN_SECONDS", 0.05)
    assert await drain(Conn(5000)) is False


async def test_drain_stops_for_a_closing_connection_and_when_the_bound_is_off(settings):
    settings.WS_MAX_SEND_BUFFER_BYTES = 1000
    conn = Conn(5000)
    conn.closing = True
    assert await drain(conn, stall_seconds=60) is True
    settings.WS_MAX_SEND_BUFFER_BYTES = 0
    assert await drain(Conn(10**9), stall_seconds=60) is True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(limits, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


async def turn(budget: AddressBudget, address: str, nbytes: int, rate=10, burst=100) -> bool:
    """One costly answer of ``nbytes``; whether it was allowed."""
    async with budget.turn(address, rate, burst) as charge:
        if charge is None:
            return False
        charge(nbytes)
        return True


async def test_budget_allows_while_in_credit_then_refuses_until_refilled(clock):
    budget = AddressBudget()
    assert await turn(budget, "10.0.0.1", 60)
    assert await turn(budget, "10.0.0.1", 60)  # 40 left: allowed, now 20 in debt
    assert not await turn(budget, "10.0.0.1", 1)
    assert await turn(budget, "10.0.0.2", 60), "another address has its own budget"
    clock.now += 2  # +20 bytes: back to 0, still nothing to spend
    assert not await turn(budget, "10.0.0.1", 1)
    clock.now += 0.5
    assert await turn(budget, "10.0.0.1", 1)


async def test_budget_refills_only_up_to_the_burst(clock):
    budget = AddressBudget()
    assert await turn(budget, "a", 1)
    clock.now += 3600
    assert await turn(budget, "a", 150)
    assert not await turn(budget, "a", 1)


async def test_parallel_answers_of_one_address_take_turns(clock):
    """Each is charged before the next checks: parallel requests cannot all pass."""
    budget = AddressBudget()
    inside = []

    async def costly(n: int) -> bool:
        async with budget.turn("a", 10, 100) as charge:
            if charge is None:
                return False
            inside.append(n)
            assert len(inside) == 1, "two answers of one address built at once"
            await asyncio.sleep(0.01)
            charge(70)
            inside.remove(n)
            return True

    assert sorted(await asyncio.gather(*(costly(n) for n in range(10)))) == [False] * 8 + [True] * 2


async def test_a_disabled_budget_allows_everything(clock):
    budget = AddressBudget()
    for _ in range(5):
        assert await turn(budget, "a", 10**9, rate=0)
        assert await turn(budget, "a", 10**9, burst=0)


async def test_addresses_whose_budget_is_full_again_are_forgotten_debtors_are_not(clock):
    budget = AddressBudget()
    assert await turn(budget, "debtor", 150)  # 50 in debt: refused for 5 s
    for n in range(3000):
        assert await turn(budget, f"10.1.{n // 250}.{n % 250}", 1)  # full again in 0.1 s
        clock.now += 0.001
    assert len(budget._accounts) < 1100, "the sweeps forget addresses whose bucket is full"
    assert not await turn(budget, "debtor", 1), "an address in debt is kept"
