"""Reads of chat history, shared by the consumer and the HTTP API."""

from django.db.models import Q, QuerySet

from chat import protocol
from chat.models import Message
from realtime.protocol import timestamp


def visible_messages(room_id: int, user) -> QuerySet[Message]:
    """Messages of the room ``room_id`` that ``user`` may see: room-wide, or private to or
    from them."""
    return Message.objects.filter(room_id=room_id).filter(
        Q(recipient__isnull=True) | Q(sender=user) | Q(recipient=user)
    )


#: What a history item needs of a message, read as plain values: no model instances, and
#: none of the reference cycles Django's ``select_related`` compiler makes per query.
ITEM_FIELDS = ("id", "created_at", "content", "recipient_id", "sender__username",
               "recipient__username")


def history_item(row: tuple, room: str) -> dict:
    """The history item of one message read as :data:`ITEM_FIELDS`."""
    pk, created_at, content, recipient_id, sender, recipient = row
    moment = timestamp(created_at)
    if recipient_id is None:
        return protocol.message_item(pk, room, sender, content, moment)
    return protocol.private_item(pk, room, sender, recipient, content, moment)


def history_page(
    room_id: int, room: str, user, *, after: int | None = None, before: int | None = None,
    limit: int,
) -> tuple[list[dict], bool]:
    """The newest ``limit`` messages of the room ``room_id`` visible to ``user`` in the
    range, oldest first.

    Returns the items and ``truncated``: whether visible messages of the range
    (``id > after``, ``id < before``) were left out because of ``limit``. The
    room is given by id, as a constant: joined by name, PostgreSQL's planner
    walked the whole table backwards by id for a room whose messages are far
    back (or for a room that does not exist), instead of the (room, id) index.
    """
    messages = visible_messages(room_id, user)
    if after is not None:
        messages = messages.filter(id__gt=after)
    if before is not None:
        messages = messages.filter(id__lt=before)
    newest = list(messages.order_by("-id").values_list(*ITEM_FIELDS)[: limit + 1])
    truncated = len(newest) > limit
    return [history_item(row, room) for row in reversed(newest[:limit])], truncated
