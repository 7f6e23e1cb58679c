"""What the chat services raise; the consumer maps them to the contract's error codes."""


class ServiceUnavailable(Exception):
    """The database or the channel layer failed; ``stored_id`` says if it was stored."""

    def __init__(self, message: str, stored_id: int | None = None) -> None:
        super().__init__(message)
        self.stored_id = stored_id


class NotInRoom(Exception):
    """The recipient of a private message is not in the room (or is no active user)."""


class InvalidTarget(Exception):
    """A private message to its own sender."""
