"""The errors of the notifications services; the HTTP views and the edge answer them."""

from realtime.batching import ServiceUnavailable

__all__ = ["Refused", "ServiceUnavailable"]


class Refused(Exception):
    """A post the service refused: ``code`` says why, ``message`` says it in words.

    The codes are those of the API's error bodies (``realtime.api.STATUS_OF``),
    so an HTTP caller answers a refusal as it is.
    """

    #: The Bearer token's user is missing or inactive.
    NO_ACTIVE_USER = "unauthorized"
    #: The Bearer token's user is not staff.
    NOT_STAFF = "forbidden"
    #: The recipient does not exist.
    NO_SUCH_USER = "not_found"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    @classmethod
    def no_active_user(cls) -> "Refused":
        return cls(cls.NO_ACTIVE_USER, "token names no active user")

    @classmethod
    def not_staff(cls) -> "Refused":
        return cls(cls.NOT_STAFF, "staff only")

    @classmethod
    def no_such_user(cls, username: str) -> "Refused":
        return cls(cls.NO_SUCH_USER, f"no user {username!r}")

