"""PROTOCOL.md, "Rooms: access, moderation, read state": the rooms over HTTP, on a real daphne.

Each test names the sentences it checks. One daphne per test (the database is per
test), so each test covers a paragraph of the contract, refusals included.
"""

import json
import time
from types import SimpleNamespace

import pytest
from websockets.sync.client import connect

from tests.chat.rooms_live import Http, assert_error, grant_moderation, session_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.daphne]

USERS = ("alice", "bob", "carol", "mod", "ops")


@pytest.fixture
def team(daphne_server, make_user, token_for):
    """A server and one API caller per user: alice, bob, carol (plain users), mod (holds
    ``chat.moderate_room``), ops (staff); ``anonymous`` sends no credentials."""
    for name in USERS:
        make_user(name, staff=name == "ops")
    grant_moderation("mod")
    server = daphne_server()
    callers = {name: Http(server, token_for(name)) for name in USERS}
    return SimpleNamespace(server=server, tokens={n: token_for(n) for n in USERS},
                           anonymous=Http(server), **callers)


def room_body(name: str, *, private: bool, owner: str | None, members=()) -> dict:
    return {"room": name, "private": private, "owner": owner, "members": list(members)}


def create(caller: Http, name: str, private: bool = False) -> dict:
    answer = caller.post("/api/rooms", {"name": name, "private": private})
    assert answer.status == 201, (answer.status, answer.raw)
    return answer.body


def add_member(caller: Http, room: str, user: str) -> dict:
    answer = caller.post(f"/api/rooms/{room}/members", {"user_id": user})
    assert answer.status == 200, (answer.status, answer.raw)
    return answer.body


def assert_no_content(answer) -> None:
    assert (answer.status, answer.raw) == (204, b""), (answer.status, answer.raw)


# --- Sockets, only to make rooms and messages the way clients do --------------------------


class Sync:
    """A chat socket (websockets' sync client) that sends and waits for its own copies."""

    def __init__(self, server, room: str, token: str) -> None:
        self.ws = connect(f"{server.ws_url}/ws/chat/{room}/?token={token}", open_timeout=10,
                          legacy=True)
        assert self.frame()["type"] == "history"
        assert self.frame()["type"] == "user_joined"

    def frame(self) -> dict:
        return json.loads(self.ws.recv(timeout=10))

    def own_copy(self, kind: str, match) -> dict:
        while True:
            frame = self.frame()
            if frame["type"] == kind and match(frame):
                return frame

    def say(self, content: str) -> int:
        self.ws.send(json.dumps({"type": "message", "content": content, "ref": content}))
        return self.own_copy("message", lambda f: f.get("ref") == content)["id"]

    def whisper(self, target: str, content: str) -> int:
        self.ws.send(json.dumps({"type": "private", "target": target, "content": content}))
        return self.own_copy("private", lambda f: f["content"] == content)["id"]

    def read(self, message_id: int) -> None:
        self.ws.send(json.dumps({"type": "read", "id": message_id}))

    def close(self) -> None:
        self.ws.close()


# --- POST /api/rooms -------------------------------------------------------------------


def test_any_user_creates_a_public_room_and_owns_it(team):
    """POST /api/rooms {"name": R, "private": B} (private optional, default false; any user)
    → 201 {"room", "private", "owner", "members"}; the creator is the owner; a public
    room's members is always []; GET /api/rooms/<room> → 200 with the same body."""
    answer = team.alice.post("/api/rooms", {"name": "town"})
    assert answer.status == 201
    assert answer.body == room_body("town", private=False, owner="alice")
    answer = team.bob.post("/api/rooms", {"name": "square", "private": False})
    assert answer.status == 201
    assert answer.body == room_body("square", private=False, owner="bob")
    longest = "A-z_0" * 12 + "9abc"  # 64 characters of the room pattern
    assert create(team.carol, longest) == room_body(longest, private=False, owner="carol")

    for caller in (team.alice, team.carol, team.ops):
        answer = caller.get("/api/rooms/town")
        assert answer.status == 200
        assert answer.body == room_body("town", private=False, owner="alice")


def test_a_private_room_starts_with_its_owner_as_only_member(team):
    """POST /api/rooms with "private": true → 201; a private room's members starts as [U]."""
    answer = team.alice.post("/api/rooms", {"name": "hq", "private": True})
    assert answer.status == 201
    assert answer.body == room_body("hq", private=True, owner="alice", members=["alice"])
    for caller in (team.alice, team.ops):
        answer = caller.get("/api/rooms/hq")
        assert answer.status == 200
        assert answer.body == room_body("hq", private=True, owner="alice", members=["alice"])


def test_a_bad_name_or_body_is_invalid_body_and_makes_no_room(team):
    """A name outside the room pattern → 400 invalid_body; a "private" that is not a boolean
    → 400 invalid_body (brief); a body that is not an object → invalid_body, not JSON →
    invalid_json (the HTTP API's rules). Nothing is created."""
    bad_names = ["", "x" * 65, "two words", "café", "a/b", "a.b", "tab\t", 12, None, ["r"]]
    for name in bad_names:
        assert_error(team.alice.post("/api/rooms", {"name": name}), 400, "invalid_body")
    assert_error(team.alice.post("/api/rooms", {}), 400, "invalid_body")
    assert_error(team.alice.post("/api/rooms", {"private": True}), 400, "invalid_body")
    for private in ("yes", "true", 1, 0, None, []):
        answer = team.alice.post("/api/rooms", {"name": "halfway", "private": private})
        assert_error(answer, 400, "invalid_body")
    assert_error(team.alice.get("/api/rooms/halfway"), 404, "not_found")
    for raw in (b"[]", b'"halfway"', b"null"):
        assert_error(team.alice.post("/api/rooms", raw=raw), 400, "invalid_body")
    assert_error(team.alice.post("/api/rooms", raw=b'{"name": '), 400, "invalid_json")
    assert_error(team.alice.post("/api/rooms", raw=b""), 400, "invalid_json")
    assert team.alice.get("/api/rooms").body == {"rooms": []}


def test_a_room_that_exists_is_a_conflict_whoever_made_it(team):
    """A room that exists (made by a join or by this call) → 409 conflict; the owner of a
    room made by a join is null, and it is public with members []."""
    create(team.alice, "dup")
    for caller in (team.alice, team.bob, team.ops):
        for private in (False, True):
            answer = caller.post("/api/rooms", {"name": "dup", "private": private})
            assert_error(answer, 409, "conflict")
    assert team.bob.get("/api/rooms/dup").body == room_body("dup", private=False, owner="alice")

    joined = Sync(team.server, "walk-in", team.tokens["carol"])
    joined.close()
    answer = team.bob.get("/api/rooms/walk-in")
    assert answer.status == 200
    assert answer.body == room_body("walk-in", private=False, owner=None)
    for private in (False, True):
        assert_error(team.carol.post("/api/rooms", {"name": "walk-in", "private": private}),
                     409, "conflict")


def test_names_are_one_namespace(team):
    """POST /api/rooms with the name of a private room the user cannot see still gets
    409 conflict (names are one namespace); the room stays invisible to them (404)."""
    create(team.alice, "secret", private=True)
    for caller in (team.bob, team.mod):
        assert_error(caller.get("/api/rooms/secret"), 404, "not_found")
        for private in (False, True):
            answer = caller.post("/api/rooms", {"name": "secret", "private": private})
            assert_error(answer, 409, "conflict")
    assert team.ops.get("/api/rooms/secret").body == room_body(
        "secret", private=True, owner="alice", members=["alice"])


# --- GET /api/rooms/<room> ---------------------------------------------------------------


def test_a_room_that_does_not_exist_is_404_but_its_messages_are_an_empty_list(team):
    """GET /api/rooms/<room> of a room that does not exist → 404; GET
    /api/rooms/<room>/messages of such a room stays 200 with an empty list. The members and
    bans endpoints of such a room, and every path of a name outside the pattern: 404."""
    assert_error(team.alice.get("/api/rooms/nowhere"), 404, "not_found")
    answer = team.alice.get("/api/rooms/nowhere/messages")
    assert answer.status == 200
    assert answer.body == {"room": "nowhere", "messages": [], "truncated": False}
    for caller in (team.alice, team.ops):
        for answer in every_room_path(caller, "nowhere", "bob")[3:]:
            assert_error(answer, 404, "not_found")
        for answer in every_room_path(caller, "x" * 65, "bob"):
            assert_error(answer, 404, "not_found")
    assert_error(team.alice.get("/api/rooms/nowhere"), 404, "not_found")  # none was made


# --- Access over HTTP ---------------------------------------------------------------------


def every_room_path(caller: Http, room: str, user: str) -> list:
    """One call of each /api/rooms/<room>... endpoint, about ``user``."""
    return [
        caller.get(f"/api/rooms/{room}"),
        caller.get(f"/api/rooms/{room}/messages"),
        caller.get(f"/api/rooms/{room}/messages?before=5&limit=2"),
        caller.post(f"/api/rooms/{room}/members", {"user_id": user}),
        caller.post(f"/api/rooms/{room}/members", {}),  # a bad body: still 404 first
        caller.delete(f"/api/rooms/{room}/members/{user}"),
        caller.post(f"/api/rooms/{room}/bans", {"user_id": user}),
        caller.post(f"/api/rooms/{room}/bans", {"nothing": 1}),
        caller.delete(f"/api/rooms/{room}/bans/{user}"),
    ]


def test_a_private_room_does_not_exist_for_anyone_but_its_members_and_staff(team):
    """A private room is visible to its members and to staff only. For anyone else it does
    not exist on the HTTP API (404 on every /api/rooms/<room>... path), a moderator
    (chat.moderate_room) who is no member included; staff may read every room."""
    create(team.alice, "vault", private=True)
    add_member(team.alice, "vault", "bob")
    talk = Sync(team.server, "vault", team.tokens["bob"])
    said = talk.say("inside the vault")
    talk.close()

    for outsider in (team.carol, team.mod):
        for about in ("bob", "carol", "alice"):
            for answer in every_room_path(outsider, "vault", about):
                assert_error(answer, 404, "not_found")
        assert outsider.get("/api/rooms").body == {"rooms": []}

    expected = room_body("vault", private=True, owner="alice", members=["alice", "bob"])
    for insider in (team.alice, team.bob, team.ops):
        assert insider.get("/api/rooms/vault").body == expected
        messages = insider.get("/api/rooms/vault/messages").body["messages"]
        assert [m["id"] for m in messages] == [said]


def test_a_banned_user_finds_no_room_on_any_path(team):
    """A user banned from a room is refused the same way: 404 on every /api/rooms/<room>...
    path; the name is still taken (409); unbanned, the room is back."""
    create(team.alice, "plaza")
    assert_no_content(team.alice.post("/api/rooms/plaza/bans", {"user_id": "carol"}))
    for about in ("carol", "bob"):
        for answer in every_room_path(team.carol, "plaza", about):
            assert_error(answer, 404, "not_found")
    assert_error(team.carol.post("/api/rooms", {"name": "plaza"}), 409, "conflict")

    walked_in = Sync(team.server, "corner", team.tokens["bob"])  # a room made by a join
    walked_in.say("hello corner")
    walked_in.close()
    assert_no_content(team.ops.post("/api/rooms/corner/bans", {"user_id": "carol"}))
    assert_error(team.carol.get("/api/rooms/corner"), 404, "not_found")
    assert_error(team.carol.get("/api/rooms/corner/messages"), 404, "not_found")

    assert_no_content(team.alice.delete("/api/rooms/plaza/bans/carol"))
    assert team.carol.get("/api/rooms/plaza").body == room_body(
        "plaza", private=False, owner="alice")
    assert team.carol.get("/api/rooms/plaza/messages").status == 200


# --- Members --------------------------------------------------------------------------------


def test_the_owner_or_staff_adds_members_and_gets_the_room_body(team):
    """POST /api/rooms/<room>/members {"user_id": U2} (the owner or staff) → 200 with the
    room body (members sorted); adding a member again → 200, no change (brief)."""
    create(team.alice, "crew", private=True)
    assert_error(team.carol.get("/api/rooms/crew"), 404, "not_found")
    assert add_member(team.alice, "crew", "carol") == room_body(
        "crew", private=True, owner="alice", members=["alice", "carol"])
    assert add_member(team.ops, "crew", "bob") == room_body(
        "crew", private=True, owner="alice", members=["alice", "bob", "carol"])
    assert add_member(team.alice, "crew", "bob") == room_body(
        "crew", private=True, owner="alice", members=["alice", "bob", "carol"])
    assert add_member(team.alice, "crew", "alice")["members"] == ["alice", "bob", "carol"]
    assert team.carol.get("/api/rooms/crew").status == 200


def test_adding_members_refusals(team):
    """Members: an unknown user → 404; a body without a string user_id → 400 invalid_body;
    private rooms only (else 400 invalid_body); a member who is not the owner → 403
    forbidden (brief); a user banned from the room → 409 conflict (brief)."""
    create(team.alice, "crew", private=True)
    add_member(team.alice, "crew", "bob")
    assert_error(team.alice.post("/api/rooms/crew/members", {"user_id": "nobody"}),
                 404, "not_found")
    for body in ({}, {"user_id": 7}, {"user_id": None}, {"user_id": ["carol"]},
                 {"user": "carol"}):
        assert_error(team.alice.post("/api/rooms/crew/members", body), 400, "invalid_body")
    assert_error(team.alice.post("/api/rooms/crew/members", raw=b"[]"), 400, "invalid_body")
    assert_error(team.alice.post("/api/rooms/crew/members", raw=b"{"), 400, "invalid_json")

    assert_error(team.bob.post("/api/rooms/crew/members", {"user_id": "carol"}),
                 403, "forbidden")
    assert_error(team.carol.get("/api/rooms/crew"), 404, "not_found")

    create(team.alice, "open-house")
    for caller in (team.alice, team.ops):
        assert_error(caller.post("/api/rooms/open-house/members", {"user_id": "bob"}),
                     400, "invalid_body")
    assert team.alice.get("/api/rooms/open-house").body["members"] == []

    assert_no_content(team.alice.post("/api/rooms/crew/bans", {"user_id": "carol"}))
    assert_error(team.alice.post("/api/rooms/crew/members", {"user_id": "carol"}),
                 409, "conflict")
    assert team.alice.get("/api/rooms/crew").body["members"] == ["alice", "bob"]


def test_removing_members(team):
    """DELETE /api/rooms/<room>/members/<user_id> (the owner, staff, or that user leaving)
    → 204; the owner cannot be removed (400 invalid_body). Brief: another member → 403
    forbidden; an unknown user → 404; a known user who is no member → 204, no change."""
    create(team.alice, "crew", private=True)
    for name in ("bob", "carol"):
        add_member(team.alice, "crew", name)

    assert_error(team.bob.delete("/api/rooms/crew/members/carol"), 403, "forbidden")
    assert_error(team.alice.delete("/api/rooms/crew/members/nobody"), 404, "not_found")
    assert_no_content(team.alice.delete("/api/rooms/crew/members/mod"))
    for caller in (team.alice, team.ops):
        assert_error(caller.delete("/api/rooms/crew/members/alice"), 400, "invalid_body")
    assert team.alice.get("/api/rooms/crew").body["members"] == ["alice", "bob", "carol"]

    assert_no_content(team.alice.delete("/api/rooms/crew/members/bob"))
    assert_error(team.bob.get("/api/rooms/crew"), 404, "not_found")
    assert_no_content(team.carol.delete("/api/rooms/crew/members/carol"))  # leaving
    assert_error(team.carol.get("/api/rooms/crew"), 404, "not_found")
    add_member(team.alice, "crew", "bob")
    assert_no_content(team.ops.delete("/api/rooms/crew/members/bob"))
    assert team.alice.get("/api/rooms/crew").body == room_body(
        "crew", private=True, owner="alice", members=["alice"])


# --- Bans -------------------------------------------------------------------------------------


def test_bans_by_the_owner_staff_and_moderators(team):
    """POST /api/rooms/<room>/bans {"user_id": U2} and DELETE /api/rooms/<room>/bans/<user_id>
    (the owner or staff; public and private rooms) → 204; brief: holders of
    chat.moderate_room too, again → 204, others → 403 forbidden, unknown user → 404."""
    create(team.alice, "forum")
    assert_error(team.bob.post("/api/rooms/forum/bans", {"user_id": "carol"}), 403, "forbidden")
    assert team.carol.get("/api/rooms/forum").status == 200
    assert_no_content(team.alice.post("/api/rooms/forum/bans", {"user_id": "carol"}))
    assert_no_content(team.alice.post("/api/rooms/forum/bans", {"user_id": "carol"}))
    assert_error(team.carol.get("/api/rooms/forum"), 404, "not_found")
    assert_error(team.bob.delete("/api/rooms/forum/bans/carol"), 403, "forbidden")
    assert_no_content(team.alice.delete("/api/rooms/forum/bans/carol"))
    assert_no_content(team.alice.delete("/api/rooms/forum/bans/carol"))  # not banned
    assert team.carol.get("/api/rooms/forum").status == 200

    assert_error(team.alice.post("/api/rooms/forum/bans", {"user_id": "nobody"}),
                 404, "not_found")
    assert_error(team.alice.delete("/api/rooms/forum/bans/nobody"), 404, "not_found")
    for body in ({}, {"user_id": 3}, {"user_id": None}, {"user_id": ["bob"]}):
        assert_error(team.alice.post("/api/rooms/forum/bans", body), 400, "invalid_body")

    for moderator, other in ((team.mod, "bob"), (team.ops, "carol")):
        assert_no_content(moderator.post("/api/rooms/forum/bans", {"user_id": other}))
        assert_error(Http(team.server, team.tokens[other]).get("/api/rooms/forum"),
                     404, "not_found")
        assert_no_content(moderator.delete(f"/api/rooms/forum/bans/{other}"))

    Sync(team.server, "made-by-join", team.tokens["bob"]).close()  # owner null
    assert_error(team.bob.post("/api/rooms/made-by-join/bans", {"user_id": "carol"}),
                 403, "forbidden")
    assert_no_content(team.mod.post("/api/rooms/made-by-join/bans", {"user_id": "carol"}))
    assert_error(team.carol.get("/api/rooms/made-by-join"), 404, "not_found")
    assert_no_content(team.ops.delete("/api/rooms/made-by-join/bans/carol"))
    assert team.carol.get("/api/rooms/made-by-join").status == 200


def test_the_owner_and_staff_cannot_be_banned(team):
    """Banning the owner or a staff user → 400 invalid_body, no effect."""
    create(team.alice, "forum")
    create(team.alice, "den", private=True)
    for room in ("forum", "den"):
        for caller, target in ((team.ops, "alice"), (team.mod, "alice"), (team.alice, "ops"),
                               (team.mod, "ops"), (team.alice, "alice")):
            if room == "den" and caller is team.mod:
                continue  # den does not exist for mod (404), see the access test
            answer = caller.post(f"/api/rooms/{room}/bans", {"user_id": target})
            assert_error(answer, 400, "invalid_body")
        assert team.ops.get(f"/api/rooms/{room}").status == 200
        body = team.alice.get(f"/api/rooms/{room}").body
        assert body["owner"] == "alice"
        assert body["members"] == (["alice"] if room == "den" else [])


def test_banning_a_member_of_a_private_room_removes_the_membership(team):
    """Banning a member of a private room also removes them from members (and unbanning
    does not make them a member again)."""
    create(team.alice, "club", private=True)
    add_member(team.alice, "club", "bob")
    add_member(team.alice, "club", "carol")
    assert_no_content(team.ops.post("/api/rooms/club/bans", {"user_id": "bob"}))
    assert team.alice.get("/api/rooms/club").body["members"] == ["alice", "carol"]
    assert_error(team.bob.get("/api/rooms/club"), 404, "not_found")
    assert_no_content(team.alice.delete("/api/rooms/club/bans/bob"))
    assert team.alice.get("/api/rooms/club").body["members"] == ["alice", "carol"]
    assert_error(team.bob.get("/api/rooms/club"), 404, "not_found")
    assert add_member(team.alice, "club", "bob")["members"] == ["alice", "bob", "carol"]
    assert team.bob.get("/api/rooms/club").status == 200


# --- GET /api/rooms -----------------------------------------------------------------------


def rooms_of(caller: Http) -> list[dict]:
    answer = caller.get("/api/rooms")
    assert answer.status == 200, answer.raw
    assert set(answer.body) == {"rooms"}
    return answer.body["rooms"]


def item(room: str, *, private: bool = False, last_id=None, read_id=None, unread=0) -> dict:
    return {"room": room, "private": private, "last_id": last_id, "read_id": read_id,
            "unread": unread}


def alpha_of(caller: Http) -> dict:
    return next(entry for entry in rooms_of(caller) if entry["room"] == "alpha")


def test_the_room_list_with_last_read_and_unread(team):
    """GET /api/rooms → every room with a message visible to the user plus every private room
    the user is a member of, newest activity first; last_id is the newest visible message,
    read_id the user's read marker, unread the visible messages after it that other users
    sent. Rooms it cannot see (private, banned) and rooms without a visible message are out."""
    create(team.alice, "mine", private=True)  # alice's, without messages: listed, last
    Sync(team.server, "quiet", team.tokens["alice"]).close()  # no message: not listed
    create(team.bob, "theirs", private=True)
    theirs = Sync(team.server, "theirs", team.tokens["bob"])
    secret = theirs.say("not for alice")
    theirs.close()

    alice = Sync(team.server, "alpha", team.tokens["alice"])
    bob = Sync(team.server, "alpha", team.tokens["bob"])
    carol = Sync(team.server, "alpha", team.tokens["carol"])
    a1 = alice.say("a1")
    b1 = bob.say("b1")
    b2 = bob.say("b2")
    p = bob.whisper("carol", "p, for carol only")
    time.sleep(0.01)  # activity times apart, whatever their resolution
    beta = Sync(team.server, "beta", team.tokens["bob"])
    b3 = beta.say("b3")
    time.sleep(0.01)
    gamma = Sync(team.server, "gamma", team.tokens["carol"])
    c1 = gamma.say("c1")
    assert_no_content(team.ops.post("/api/rooms/gamma/bans", {"user_id": "alice"}))

    assert rooms_of(team.alice) == [
        item("beta", last_id=b3, unread=1),
        item("alpha", last_id=b2, unread=2),  # not p; not her own a1
        item("mine", private=True),
    ]
    assert rooms_of(team.carol) == [
        item("gamma", last_id=c1, unread=0),
        item("beta", last_id=b3, unread=1),
        item("alpha", last_id=p, unread=4),  # a1, b1, b2 and the private p
    ]
    assert rooms_of(team.bob) == [
        item("gamma", last_id=c1, unread=1),
        item("beta", last_id=b3, unread=0),
        item("alpha", last_id=p, unread=1),
        item("theirs", private=True, last_id=secret, unread=0),
    ]

    alice.read(b1)
    carol.read(p)
    deadline = time.monotonic() + 5
    while alpha_of(team.alice)["read_id"] != b1 or alpha_of(team.carol)["read_id"] != p:
        assert time.monotonic() < deadline, "the read markers did not show"
        time.sleep(0.05)
    assert alpha_of(team.alice) == item("alpha", last_id=b2, read_id=b1, unread=1)
    assert alpha_of(team.carol) == item("alpha", last_id=p, read_id=p, unread=0)
    assert alpha_of(team.bob) == item("alpha", last_id=p, unread=1)  # markers are per user
    assert a1 < b1 < b2 < p < b3 < c1
    for sock in (alice, bob, carol, beta, gamma):
        sock.close()


# --- Authentication, CSRF, methods -----------------------------------------------------------


def test_room_endpoints_need_credentials(team):
    """Same authentication as the HTTP API: no or bad credentials → 401 unauthorized."""
    create(team.alice, "guarded")
    bad_token = Http(team.server, "not-a-jwt")
    for caller in (team.anonymous, bad_token):
        answers = [
            caller.post("/api/rooms", {"name": "sneaky"}),
            caller.get("/api/rooms"),
            *every_room_path(caller, "guarded", "bob"),
        ]
        for answer in answers:
            assert_error(answer, 401, "unauthorized")
    assert_error(team.alice.get("/api/rooms/sneaky"), 404, "not_found")


def test_session_writes_need_the_csrf_token(team):
    """Same CSRF rule as the HTTP API: a write authenticated by the session cookie without
    Django's CSRF token → 403 forbidden and no effect; with it, it is done; reads need none."""
    session = session_of("alice")
    no_csrf = Http(team.server, session=session)
    with_csrf = Http(team.server, session=session, csrf="c" * 32)
    assert no_csrf.get("/api/rooms").status == 200

    assert_error(no_csrf.post("/api/rooms", {"name": "by-session"}), 403, "forbidden")
    assert_error(team.alice.get("/api/rooms/by-session"), 404, "not_found")
    answer = with_csrf.post("/api/rooms", {"name": "by-session", "private": True})
    assert answer.status == 201
    assert answer.body == room_body("by-session", private=True, owner="alice",
                                    members=["alice"])
    assert no_csrf.get("/api/rooms/by-session").status == 200

    assert_error(no_csrf.post("/api/rooms/by-session/members", {"user_id": "bob"}),
                 403, "forbidden")
    assert team.alice.get("/api/rooms/by-session").body["members"] == ["alice"]
    assert with_csrf.post("/api/rooms/by-session/members", {"user_id": "bob"}).status == 200
    assert_error(no_csrf.delete("/api/rooms/by-session/members/bob"), 403, "forbidden")
    assert_error(no_csrf.post("/api/rooms/by-session/bans", {"user_id": "carol"}),
                 403, "forbidden")
    assert team.carol.get("/api/rooms/by-session").status == 404  # private, not banned
    assert team.alice.get("/api/rooms/by-session").body["members"] == ["alice", "bob"]
    assert_no_content(with_csrf.delete("/api/rooms/by-session/members/bob"))


def test_other_methods_are_method_not_allowed(team):
    """Every 4xx under /api/ carries the error body: a method an endpoint does not take → 405."""
    create(team.alice, "methods")
    assert_error(team.alice("PUT", "/api/rooms", {"name": "x"}), 405, "method_not_allowed")
    assert_error(team.alice.delete("/api/rooms/methods"), 405, "method_not_allowed")
    assert_error(team.alice.post("/api/rooms/methods", {}), 405, "method_not_allowed")
