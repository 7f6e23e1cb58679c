"""Admin for notifications: find what a user was sent and whether it arrived."""

import json
from datetime import datetime

from django.contrib import admin
from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html

from notifications import store
from notifications.models import Notification


def short_time(moment: datetime) -> str:
    """A time as "2026-12-02 17:18" in the current time zone, wrapping only at the space."""
    local = timezone.localtime(moment)
    return format_html('<span class="nowrap">{}</span> <span class="nowrap">{}</span>',
                       local.strftime("%Y-%m-%d"), local.strftime("%H:%M"))


class DeliveredFilter(admin.SimpleListFilter):
    """Delivered (acknowledged, or a broadcast) or still queued."""

    title = "delivered"
    parameter_name = "delivered"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        return [("yes", "Delivered"), ("no", "Queued")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(delivered_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(delivered_at__isnull=True)
        return queryset


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    # Narrow enough for a 1280 px window with both sidebars open: one column for the
    # recipient, the data cut short, and short times that may wrap (a datetime column
    # never wraps, and took 170 px).
    list_display = ["id", "recipient", "short_data", "created", "delivered"]
    list_filter = [DeliveredFilter, "broadcast", "created_at"]
    # "data_text" is the JSON cast to text (see get_queryset), so any key or value matches.
    search_fields = ["user__username", "data_text"]
    # No date_hierarchy, and no full count: both read the whole table on every page
    # load (see chat.admin.MessageAdmin). The created_at filter runs no query.
    show_full_result_count = False
    ordering = ["-id"]
    raw_id_fields = ["user"]
    list_select_related = ["user"]

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        """The "delete selected" action: the recipients' queues locked first, as a batch does."""
        store.delete(queryset)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        """Add ``data_text``: the JSON as text, so search finds any key or value."""
        return super().get_queryset(request).annotate(data_text=Cast("data", TextField()))

    @admin.display(description="to", ordering="user__username")
    def recipient(self, obj: Notification) -> str | None:
        """The user, or "(broadcast)" (no username has parentheses)."""
        if obj.broadcast:
            return "(broadcast)"
        return obj.user.username if obj.user else None

    @admin.display(description="data")
    def short_data(self, obj: Notification) -> str:
        """The JSON as posted (not a Python repr), cut to fit the page."""
        text = json.dumps(obj.data, ensure_ascii=False)
        return text if len(text) <= 60 else text[:59] + "…"

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: Notification) -> str:
        return short_time(obj.created_at)

    @admin.display(description="delivered", ordering="delivered_at")
    def delivered(self, obj: Notification) -> str | None:
        return short_time(obj.delivered_at) if obj.delivered_at else None
