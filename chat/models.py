"""Chat history and rooms: messages (room-wide or private), owners, members, bans, read markers."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone


class Room(models.Model):
    """A chat room: public (made by its first join, or over the API) or private.

    A private room is visible to its members and to staff only. Every room may ban
    users; a banned user cannot see it at all.
    """

    name = models.CharField(max_length=64, unique=True, help_text="[A-Za-z0-9_-]{1,64}")
    created_at = models.DateTimeField(default=timezone.now)
    last_message_at = models.DateTimeField(
        null=True,
        blank=True,
        db_index=True,
        help_text="Time of the latest message, to within a second (chat.store).",
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="chat_rooms_owned",
        help_text="Who made the room over the API; empty for a room made by a join.",
    )
    private = models.BooleanField(
        default=False, help_text="Visible to its members and to staff only."
    )

    class Meta:
        ordering = ["name"]
        permissions = [
            ("moderate_room", "Can delete messages and ban users in every room"),
        ]

    def __str__(self) -> str:
        return f"{self.name} (private)" if self.private else self.name


class RoomMember(models.Model):
    """A member of a private room (public rooms have no members)."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_memberships"
    )
    added_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "member"
        ordering = ["room", "user"]
        constraints = [
            models.UniqueConstraint(fields=["room", "user"], name="chat_member_once"),
        ]
        # The unique constraint's index serves "is U a member of R"; this one "U's rooms".
        indexes = [models.Index(fields=["user", "room"], name="chat_member_user_room")]

    def __str__(self) -> str:
        return f"{self.user} in {self.room}"


class RoomBan(models.Model):
    """A user banned from a room: the room does not exist for them."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="bans")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_bans"
    )
    banned_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "ban"
        ordering = ["room", "user"]
        constraints = [
            models.UniqueConstraint(fields=["room", "user"], name="chat_ban_once"),
        ]

    def __str__(self) -> str:
        return f"{self.user} banned from {self.room}"

    def clean(self) -> None:
        """The owner and staff cannot be banned (the API answers 400 the same)."""
        if self.user_id is None or self.room_id is None:
            return
        if self.user.is_staff or self.user_id == self.room.owner_id:
            raise ValidationError({"user": "The room's owner and staff cannot be banned."})


class ReadMarker(models.Model):
    """The newest message id a user has read in a room; it only moves forward."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_read_markers"
    )
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="read_markers")
    message_id = models.BigIntegerField(help_text="The id of the newest message read.")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "read marker"
        ordering = ["room", "user"]
        constraints = [
            models.UniqueConstraint(fields=["user", "room"], name="chat_read_marker_once"),
        ]

    def __str__(self) -> str:
        return f"{self.user} read {self.room} up to #{self.message_id}"


class Message(models.Model):
    """One message of a room; with a recipient it is private to sender and recipient.

    Ids come from one sequence for room and private messages, so within a room
    they rise in the order every connection receives them.
    """

    # No index of its own: the (room, id) index below serves every lookup by room, and
    # one index less is one B-tree less to write per stored message.
    room = models.ForeignKey(
        Room, on_delete=models.CASCADE, related_name="messages", db_index=False
    )
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
