"""Chat history: rooms and their messages (room-wide or private)."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class Room(models.Model):
    """A chat room, created by its first message."""

    name = models.CharField(max_length=64, unique=True, help_text="[A-Za-z0-9_-]{1,64}")
    created_at = models.DateTimeField(default=timezone.now)
    last_message_at = models.DateTimeField(
        null=True, blank=True, db_index=True, help_text="Time of the latest message."
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Message(models.Model):
    """One message of a room; with a recipient it is private to sender and recipient.

    Ids come from one sequence for room and private messages, so within a room
    they rise in the order every connection receives them.
    """

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_messages_sent"
    )
    recipient = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="chat_messages_received",
        help_text="Set for a private message; empty for a message to the whole room.",
    )
    content = models.TextField(help_text="1 to 4000 characters.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            # "last N of a room", "after id X", "before id X": all walk (room, id).
            models.Index(fields=["room", "id"], name="chat_message_room_id"),
        ]

    def __str__(self) -> str:
        kind = f"private to {self.recipient}" if self.recipient_id else "to the room"
        return f"#{self.pk} {self.sender} {kind}: {self.content[:50]}"

    @property
    def is_private(self) -> bool:
        return self.recipient_id is not None
