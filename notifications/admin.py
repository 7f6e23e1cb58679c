"""Admin for notifications: find what a user was sent and whether it arrived."""

from django.contrib import admin
from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast
from django.http import HttpRequest

from notifications.models import Notification


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
    list_display = ["id", "user", "broadcast", "short_data", "created_at", "delivered_at"]
    list_filter = [DeliveredFilter, "broadcast", "created_at"]
    # "data_text" is the JSON cast to text (see get_queryset), so any key or value matches.
    search_fields = ["user__username", "data_text"]
    # No date_hierarchy, and no full count: both read the whole table on every page
    # load (see chat.admin.MessageAdmin). The created_at filter runs no query.
    show_full_result_count = False
    ordering = ["-id"]
    raw_id_fields = ["user"]
    list_select_related = ["user"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        """Add ``data_text``: the JSON as text, so search finds any key or value."""
        return super().get_queryset(request).annotate(data_text=Cast("data", TextField()))

    @admin.display(description="data")
    def short_data(self, obj: Notification) -> str:
        text = str(obj.data)
        return text if len(text) <= 80 else text[:79] + "…"
