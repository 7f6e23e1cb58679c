"""Who may see and do what in a room, and the room changes that follow (ORM side).

Every function here is synchronous and runs on the database thread (through
:mod:`chat.services`, or in the admin). The rules, as README's table gives them:

* a public room is visible to everyone not banned there, a private one to its
  members; staff see every room and cannot be banned;
* the owner and staff manage a private room's members;
* the owner, staff and holders of ``chat.moderate_room`` ban and delete any
  room message; authors delete their own; a private message only its sender.

Refusals raise :mod:`chat.errors`; a room the user may not see is
:class:`~chat.errors.NotFound`, never :class:`~chat.errors.Forbidden`, so that
its existence does not leak.
"""

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from chat.errors import Conflict, Forbidden, InvalidRequest, NotFound
from chat.models import Message, ReadMarker, Room, RoomBan, RoomMember
from chat.selectors import history_page, visible_messages

MODERATE_PERMISSION = "chat.moderate_room"


@dataclass(frozen=True, slots=True)
class RoomAccess:
    """A room as one user finds it: ``visible`` says whether it exists for them."""

    id: int
    name: str
    private: bool
    owner_id: int | None
    visible: bool

    def can_manage(self, user) -> bool:
        """Add and remove members: the owner and staff."""
        return user.is_staff or (self.owner_id is not None and self.owner_id == user.pk)

    def can_moderate(self, user) -> bool:
        """Ban and delete anyone's room messages (asks the database for permissions once
        per user object)."""
        return self.can_manage(user) or user.has_perm(MODERATE_PERMISSION)


def room_access(name: str, user, *, create: bool = False) -> RoomAccess | None:
    """``name`` as ``user`` finds it, in one indexed query; ``None``: no such room.

    With ``create`` a missing room is made public (a join makes it, as before
    rooms could be private).
    """
    rooms = Room.objects.filter(name=name)
    if not user.is_staff:
        rooms = rooms.annotate(
            banned=Exists(RoomBan.objects.filter(room=OuterRef("pk"), user=user)),
            member=Exists(RoomMember.objects.filter(room=OuterRef("pk"), user=user)),
        )
    fields = ["pk", "private", "owner_id"] + ([] if user.is_staff else ["banned", "member"])
    row = rooms.values(*fields).first()
    if row is None:
        if not create:
            return None
        Room.objects.get_or_create(name=name)
        return room_access(name, user)
    visible = user.is_staff or (not row["banned"] and (not row["private"] or row["member"]))
    return RoomAccess(row["pk"], name, row["private"], row["owner_id"], visible)


def visible_room(name: str, user) -> RoomAccess:
    """The room if ``user`` may see it, else :class:`~chat.errors.NotFound`."""
    access = room_access(name, user)
    if access is None or not access.visible:
        raise NotFound("no such room")
    return access


@dataclass(frozen=True, slots=True)
class Joined:
    """The room as a joining user finds it, and its history if they may see it."""

    access: RoomAccess
    items: list[dict]
    truncated: bool


def join(name: str, user, *, after: int | None, limit: int) -> Joined:
    """A join: the room (made public if missing) and, if visible, its history; two
    indexed queries, for a public room as for a private one."""
    access = room_access(name, user, create=True)
    if not access.visible:
        return Joined(access, [], False)
    items, truncated = history_page(access.id, name, user, after=after, limit=limit)
    return Joined(access, items, truncated)


def room_history(name: str, user, *, before: int | None, limit: int
                 ) -> tuple[list[dict], bool]:
    """History over HTTP: a room that does not exist has none; one the user may not
    see is :class:`~chat.errors.NotFound`."""
    access = room_access(name, user)
    if access is None:
        return [], False
    if not access.visible:
        raise NotFound("no such room")
    return history_page(access.id, name, user, before=before, limit=limit)


def room_body(access: RoomAccess) -> dict:
    """The API's room body: name, privacy, owner and (private rooms) members."""
    owner = None
    if access.owner_id is not None:
        owner = get_user_model().objects.filter(pk=access.owner_id).values_list(
            "username", flat=True).first()
    members = member_names(access.name) if access.private else []
    return {"room": access.name, "private": access.private, "owner": owner, "members": members}


def member_names(name: str) -> list[str]:
    return sorted(RoomMember.objects.filter(room__name=name).values_list(
        "user__username", flat=True))


def create_room(name: str, user, *, private: bool) -> dict:
    """A new room owned by ``user``; a private one has them as its first member."""
    try:
        with transaction.atomic():
            room = Room.objects.create(name=name, owner=user, private=private)
            if private:
                RoomMember.objects.create(room=room, user=user)
    except IntegrityError:
        raise Conflict(f"room {name!r} exists") from None
    return room_body(RoomAccess(room.pk, name, private, user.pk, True))


def _user_named(username: str):
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise NotFound(f"no user {username!r}")
    return user


def add_member(name: str, user, username: str) -> dict:
    """Make ``username`` a member of the private room ``name`` (the owner or staff)."""
    access = visible_room(name, user)
    if not access.can_manage(user):
        raise Forbidden("only the room's owner or staff manage its members")
    if not access.private:
        raise InvalidRequest("a public room has no members")
    member = _user_named(username)
    if RoomBan.objects.filter(room_id=access.id, user=member).exists():
        raise Conflict(f"{username!r} is banned from this room; lift the ban first")
    RoomMember.objects.get_or_create(room_id=access.id, user=member)
    return room_body(access)


def remove_member(name: str, user, username: str) -> bool:
    """Remove ``username`` from the private room (the owner, staff, or themselves);
    whether they were a member."""
    access = visible_room(name, user)
    member = _user_named(username)
    if member.pk != user.pk and not access.can_manage(user):
        raise Forbidden("only the room's owner or staff remove other members")
    if not access.private:
        raise InvalidRequest("a public room has no members")
    if member.pk == access.owner_id:
        raise InvalidRequest("the owner cannot be removed")
    deleted, _ = RoomMember.objects.filter(room_id=access.id, user=member).delete()
    return bool(deleted)


def ban(name: str, user, username: str) -> bool:
    """Ban ``username`` from the room (and from its members); whether it is new."""
    access = visible_room(name, user)
    if not access.can_moderate(user):
        raise Forbidden("only the room's owner, staff or moderators ban")
    target = _user_named(username)
    if target.is_staff or target.pk == access.owner_id:
        raise InvalidRequest("the owner and staff cannot be banned")
    with transaction.atomic():
        _, created = RoomBan.objects.get_or_create(room_id=access.id, user=target)
        RoomMember.objects.filter(room_id=access.id, user=target).delete()
    return created


def unban(name: str, user, username: str) -> None:
    access = visible_room(name, user)
    if not access.can_moderate(user):
        raise Forbidden("only the room's owner, staff or moderators lift bans")
    RoomBan.objects.filter(room_id=access.id, user=_user_named(username)).delete()


@dataclass(frozen=True, slots=True)
class Deleted:
    """A deleted message: who could see it (``None``: the whole room)."""

    id: int
    audience: list[str] | None


def delete_message(access: RoomAccess, user, message_id: int) -> Deleted:
    """Delete one message of the room as ``user`` asks (the rules above)."""
    row = (Message.objects.filter(pk=message_id, room_id=access.id)
           .values("sender_id", "recipient_id", "sender__username", "recipient__username")
           .first())
    if row is None:
        raise NotFound(f"no message {message_id} in this room")
    if row["recipient_id"] is not None:
        if user.pk not in (row["sender_id"], row["recipient_id"]):
            raise NotFound(f"no message {message_id} in this room")
        if user.pk != row["sender_id"]:
            raise Forbidden("only its sender deletes a private message")
    elif user.pk != row["sender_id"] and not access.can_moderate(user):
        raise Forbidden("only its author, the room's owner, staff or moderators delete it")
    if not Message.objects.filter(pk=message_id).delete()[0]:
        raise NotFound(f"no message {message_id} in this room")  # deleted meanwhile
    audience = None
    if row["recipient_id"] is not None:
        audience = [row["sender__username"], row["recipient__username"]]
    return Deleted(message_id, audience)


def deleted_messages(messages) -> list[tuple[str, Deleted]]:
    """``(room name, Deleted)`` of messages about to be deleted (the admin's)."""
    return [
        (m.room.name, Deleted(m.pk, None if m.recipient_id is None
                              else [m.sender.username, m.recipient.username]))
        for m in messages.select_related("room", "sender", "recipient")
    ]


def move_read_marker(access: RoomAccess, user, message_id: int) -> bool:
    """Move ``user``'s marker forward to ``message_id``, a visible message of the room;
    whether it moved."""
    if not visible_messages(access.id, user).filter(pk=message_id).exists():
        raise NotFound(f"no message {message_id} in this room")
    now = timezone.now()
    with transaction.atomic():
        if ReadMarker.objects.filter(user=user, room_id=access.id,
                                     message_id__lt=message_id).update(
                message_id=message_id, updated_at=now):
            return True
        _, created = ReadMarker.objects.get_or_create(
            user=user, room_id=access.id, defaults={"message_id": message_id, "updated_at": now})
        return created


def rooms_overview(user, *, limit: int | None = None) -> list[dict]:
    """``GET /api/rooms`` (the lobby: its first ``limit``): one query, whatever the
    number of rooms.

    Each room's newest visible message, the user's marker and the unread count
    are subqueries on the (room, id) index of messages; the count walks only
    the ids after the marker.
    """
    visible = Q(recipient__isnull=True) | Q(sender=user) | Q(recipient=user)
    messages = Message.objects.filter(visible, room=OuterRef("pk"))
    # No ordering: the model's default one (room name) joined chat_room in every subquery.
    marker = (ReadMarker.objects.filter(room=OuterRef("pk"), user=user).order_by()
              .values("message_id")[:1])
    unread = (messages.filter(id__gt=Coalesce(OuterRef("read_id"), 0)).exclude(sender=user)
              .order_by().values("room").annotate(count=Count("pk")).values("count"))
    member = Exists(RoomMember.objects.filter(room=OuterRef("pk"), user=user))
    rooms = Room.objects.all()
    if not user.is_staff:
        rooms = rooms.filter(Q(private=False) | member).exclude(
            Exists(RoomBan.objects.filter(room=OuterRef("pk"), user=user)))
    rooms = (
        rooms.annotate(last_id=Subquery(messages.order_by("-id").values("id")[:1]),
                       read_id=Subquery(marker))
        .filter(Q(last_id__isnull=False) | member)
        .annotate(unread=Coalesce(Subquery(unread), 0))
        .order_by(F("last_id").desc(nulls_last=True), "-created_at", "name")
        .values("name", "private", "last_id", "read_id", "unread")
    )[:limit]
    return [{"room": r["name"], "private": r["private"], "last_id": r["last_id"],
             "read_id": r["read_id"], "unread": r["unread"]} for r in rooms]
