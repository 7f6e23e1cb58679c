"""Former home of the notifications services; the public API is :mod:`notifications.api`."""

from notifications.api import aack, abroadcast, ack, anotify, broadcast, notify

__all__ = ["aack", "abroadcast", "ack", "anotify", "broadcast", "notify"]
