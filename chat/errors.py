"""What the chat services raise; consumers and views map them to the contract's codes.

Each room refusal carries the API's error code (``code``): the HTTP views answer
it as it is, the consumer sends the socket's code of the same name.
"""

from realtime.batching import ServiceUnavailable

__all__ = ["Conflict", "Forbidden", "InvalidRequest", "InvalidTarget", "NotFound", "NotInRoom",
           "RoomRefusal", "ServiceUnavailable"]


class NotInRoom(Exception):
    """The recipient of a private message is not in the room (or is no active user)."""


class InvalidTarget(Exception):
    """A private message to its own sender."""


class RoomRefusal(Exception):
    """A room action refused; ``code`` is the API's error code."""

    code = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(RoomRefusal):
    """No such room, user or message, or one the user may not see."""

    code = "not_found"


class Forbidden(RoomRefusal):
    """The user sees the room but may not do this there."""

    code = "forbidden"


class Conflict(RoomRefusal):
    """The name is taken, or the request contradicts the room's state."""

    code = "conflict"


class InvalidRequest(RoomRefusal):
    """A request the room cannot take whoever asks (a public room's members, banning staff)."""

    code = "invalid_body"
