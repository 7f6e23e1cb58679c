"""Writes gathered into batches: how large one is, and what a failed one becomes."""

from collections.abc import Awaitable, Callable
from typing import TypeVar

from django.db import OperationalError

T = TypeVar("T")

#: Rows per transaction: two usernames each in one ``IN`` stay under SQLite's parameter cap.
MAX_BATCH = 200


class ServiceUnavailable(Exception):
    """The database or the channel layer failed; ``stored_id`` says if it was stored anyway."""

    def __init__(self, message: str, stored_id: int | None = None) -> None:
        super().__init__(message)
        self.stored_id = stored_id


class DatabaseUnreachable(OperationalError):
    """No connection to the database could be made (``realtime.db`` raises it)."""


async def each_alone(items: list[T], store: Callable[[T], Awaitable[None]],
                     failed: Callable[[list[T]], None]) -> None:
    """After a batch failed: ``store`` each item in a transaction of its own.

    One bad item then fails only itself: ``failed([item])`` is called, inside
    the ``except`` (so ``logger.exception`` works there), for each that fails
    again. Once the database cannot be reached, the item and those left fail
    with it, untried, in one call: an outage logs once per batch, not per item.
    """
    for index, item in enumerate(items):
        try:
            await store(item)
        except DatabaseUnreachable:
            failed(items[index:])
            return
        except Exception:
            failed([item])
