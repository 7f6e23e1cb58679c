"""What the chat services raise; the consumer maps them to the contract's error codes."""

from realtime.batching import ServiceUnavailable

__all__ = ["InvalidTarget", "NotInRoom", "ServiceUnavailable"]


class NotInRoom(Exception):
    """The recipient of a private message is not in the room (or is no active user)."""


class InvalidTarget(Exception):
    """A private message to its own sender."""
