"""What the chat services raise; the consumer and the API map them to answers.

:class:`NotInRoom` and :class:`InvalidTarget` are still
:class:`~realtime.protocol.ProtocolError`\\ s, so that a consumer which does not
map them yet answers with the same ``error`` frame.
"""

from realtime.protocol import ErrorCode, ProtocolError


class ServiceUnavailable(Exception):
    """The database or the channel layer failed; ``stored_id`` says if it was stored."""

    def __init__(self, message: str, stored_id: int | None = None) -> None:
        super().__init__(message)
        self.stored_id = stored_id


class NotInRoom(ProtocolError):
    """The recipient of a private message is not in the room (or is no active user)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.NOT_IN_ROOM, message)


class InvalidTarget(ProtocolError):
    """A private message to its own sender."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_MESSAGE, message)
