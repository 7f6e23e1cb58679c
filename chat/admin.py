"""Moderation: rooms with their owners, members and bans; chat history.

What changes here reaches the open connections as it would over the API:
a message deleted (one, or many with the delete action) disappears from
every client that shows it, and a member removed or a user banned has their
connections to the room closed (4004), on every process, once the change is
committed.
"""

from django.contrib import admin
from django.db import transaction

from chat import rooms, services
from chat.models import Message, Room, RoomBan, RoomMember


class PrivateFilter(admin.SimpleListFilter):
    title = "kind"
    parameter_name = "kind"

    def lookups(self, request, model_admin):
        return [("room", "To the room"), ("private", "Private")]

    def queryset(self, request, queryset):
        if self.value() == "room":
            return queryset.filter(recipient__isnull=True)
        if self.value() == "private":
            return queryset.filter(recipient__isnull=False)
        return queryset


class MemberInline(admin.TabularInline):
    model = RoomMember
    extra = 0
    raw_id_fields = ["user"]
    fields, readonly_fields = ["user", "added_at"], ["added_at"]
    verbose_name_plural = "members (private rooms)"


class BanInline(admin.TabularInline):
    model = RoomBan
    extra = 0
    raw_id_fields = ["user"]
    fields, readonly_fields = ["user", "banned_at"], ["banned_at"]


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["name", "private", "owner", "created_at", "last_message_at"]
    list_filter = ["private"]
    search_fields = ["name", "owner__username"]
    date_hierarchy = "created_at"
    ordering = ["-last_message_at"]
    raw_id_fields = ["owner"]
    inlines = [MemberInline, BanInline]

    def save_formset(self, request, form, formset, change) -> None:
        """Save members and bans; whoever lost access is closed out of the room."""
        room = form.instance
        before = set(RoomMember.objects.filter(room=room).values_list("user__username",
                                                                       flat=True))
        super().save_formset(request, form, formset, change)
        if formset.model is RoomMember:
            after = set(RoomMember.objects.filter(room=room).values_list("user__username",
                                                                          flat=True))
            lost = before - after if room.private else set()
        elif formset.model is RoomBan:
            lost = set(RoomBan.objects.filter(room=room).values_list("user__username",
                                                                     flat=True))
            # As over the API: a ban also ends the membership.
            RoomMember.objects.filter(room=room, user__username__in=lost).delete()
        else:
            return
        for username in sorted(lost):
            transaction.on_commit(lambda u=username: services.evict_blocking(room.name, u))

    def save_model(self, request, obj, form, change) -> None:
        super().save_model(request, obj, form, change)
        if change and "private" in form.changed_data and obj.private:
            # Made private: whoever is not a member (nor staff) must leave.
            transaction.on_commit(lambda: services.evict_outsiders_blocking(obj.name))


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    """Messages, newest first.

    Every part of a list page is a query over the whole table at the sizes a
    chat reaches: a ``date_hierarchy`` reads every distinct day (1.1 s on SQLite
    at 300,000 messages), a "room" filter lists every room, and the full count
    is a second count. None of them is here: the ``created_at`` filter runs no
    query, and a room is found by searching its name.
    """

    list_display = ["id", "room", "sender", "recipient", "short_content", "created_at"]
    list_filter = [PrivateFilter, "created_at"]
    search_fields = ["content", "sender__username", "recipient__username", "room__name"]
    show_full_result_count = False
    list_select_related = ["room", "sender", "recipient"]
    raw_id_fields = ["room", "sender", "recipient"]
    ordering = ["-id"]

    # Deleting abusive messages uses the built-in "Delete selected" action too.
    def delete_model(self, request, obj: Message) -> None:
        self.delete_queryset(request, Message.objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset) -> None:
        """Delete, then tell every room: the messages leave every open client."""
        deletions = rooms.deleted_messages(queryset)
        super().delete_queryset(request, queryset)
        transaction.on_commit(lambda: services.deleted_blocking(deletions))

    @admin.display(description="content")
    def short_content(self, message: Message) -> str:
        return message.content if len(message.content) <= 80 else message.content[:79] + "…"
