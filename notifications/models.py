"""Notifications: what was posted to a user (or to everyone) and whether it arrived.

A row is written before the notification is pushed, so a push that finds no
open connection (or one that misses a connecting client) is never lost: the
row stays undelivered until the client acknowledges it. Broadcasts are stored
only to give them an id from the same sequence; they are delivered at once.
"""

from django.conf import settings
from django.db import models
from django.utils import timezone


class Notification(models.Model):
    """One notification for one user, or one broadcast (no user)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="notifications",
        help_text="The recipient; empty for a broadcast.",
    )
    data = models.JSONField(help_text="The JSON object that was posted, sent as is.")
    broadcast = models.BooleanField(
        default=False, help_text="Sent to every connection at once; never queued or re-sent."
    )
    created_at = models.DateTimeField(
        default=timezone.now, help_text="When it was posted (the NOTE's timestamp)."
    )
    delivered_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the client acknowledged it (or, for a broadcast, when it was sent); "
        "empty while it is queued.",
    )

    class Meta:
        ordering = ["id"]
        indexes = [
            # "The undelivered notifications of a user, oldest first" (on connect, and
            # the queue limit's trim): a partial index holds only the queued rows.
            models.Index(
                fields=["user", "id"],
                condition=models.Q(delivered_at__isnull=True),
                name="notification_undelivered",
            ),
        ]

    def __str__(self) -> str:
        target = "broadcast" if self.broadcast else f"to {self.user}"
        state = "delivered" if self.delivered_at else "queued"
        return f"#{self.pk} {target} ({state})"
