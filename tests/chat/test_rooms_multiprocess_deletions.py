"""Rooms across processes: ``message_deleted`` on two daphne processes.

PROTOCOL.md, "Rooms: access, moderation, read state": ``message_deleted`` reaches every
connection that could see the message, on every process, in the room's order (the same
place among the messages on every connection), also for a deletion made in the admin.
"""

import asyncio
import json
import time

import pytest

from tests.chat.across_processes import (
    AT_ONCE,
    api,
    in_a_thread,
    join,
    kinds_until_pong,
    recv,
    recv_type,
    say,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.daphne, pytest.mark.redis]


# --- message_deleted across processes --------------------------------------------------------


async def events(ws, until_id: int, timeout: float = 10) -> list[tuple[str, int]]:
    """``("message", id)`` and ``("message_deleted", id)`` in the order they arrive, until
    the message ``until_id`` has arrived."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, max(0.1, deadline - time.monotonic()))
        if frame["type"] in {"message", "private", "message_deleted"}:
            seen.append((frame["type"], frame["id"]))
            if frame["type"] != "message_deleted" and frame["id"] == until_id:
                return seen


async def test_a_deletion_reaches_both_processes_in_the_rooms_order(two_servers, people):
    """alice (A) sends m1, then m2 and the deletion of m1 back to back, then m3: every
    connection, on both processes, gets m2, then message_deleted m1, then m3."""
    server_a, server_b = two_servers
    alice, _ = await join(server_a, "del", people["alice"])
    others = [(await join(server, "del", people[name]))[0]
              for server, name in ((server_b, "bob"), (server_a, "carol"), (server_b, "carol"))]
    await alice.send(json.dumps({"type": "message", "content": "m1"}))
    m1 = await recv_type(alice, "message")
    for ws in others:
        assert (await recv_type(ws, "message"))["id"] == m1["id"]

    await alice.send(json.dumps({"type": "message", "content": "m2"}))
    await alice.send(json.dumps({"type": "delete", "id": m1["id"]}))
    await alice.send(json.dumps({"type": "message", "content": "m3"}))
    ids = []
    for _ in range(2):
        frame = await recv_type(alice, "message")
        ids.append(frame["id"])
    m2, m3 = ids
    assert m1["id"] < m2 < m3
    for ws in others:
        got = await events(ws, m3)
        assert got == [("message", m2), ("message_deleted", m1["id"]), ("message", m3)], got
    for ws in (alice, *others):
        await ws.close()


async def test_a_message_from_the_other_process_just_before_a_deletion_comes_first(
        two_servers, people):
    """bob (B) has his message X back; at that moment alice (A) deletes m1. X was in the
    room before the deletion was asked: every connection, on both processes, gets X
    before message_deleted m1 (even those of A, where X may still be on its way)."""
    server_a, server_b = two_servers
    alice, _ = await join(server_a, "race", people["alice"])
    bob, _ = await join(server_b, "race", people["bob"])
    carol_a, _ = await join(server_a, "race", people["carol"])
    carol_b, _ = await join(server_b, "race", people["carol"])
    m1 = await say(alice, "m1")
    for ws in (bob, carol_a, carol_b):
        assert (await recv_type(ws, "message"))["id"] == m1
    for round_ in range(5):
        victim = await say(alice, f"victim{round_}")
        await bob.send(json.dumps({"type": "message", "content": f"x{round_}"}))
        while (frame := await recv_type(bob, "message"))["content"] != f"x{round_}":
            pass
        x = frame["id"]
        await alice.send(json.dumps({"type": "delete", "id": victim}))
        for ws in (alice, bob, carol_a, carol_b):
            got = [] if ws is bob else await events(ws, x)  # bob has x already
            assert ("message_deleted", victim) not in got, f"round {round_}: {got}"
            assert (await recv_type(ws, "message_deleted"))["id"] == victim
    for ws in (alice, bob, carol_a, carol_b):
        await ws.close()


async def test_deletions_amid_a_burst_keep_one_order_on_every_connection(two_servers, people):
    """bob (B) and carol (A) send a burst while alice (A, the author) deletes her messages
    one by one: every connection on both processes gets the same sequence of messages and
    deletions, ids rising, and each deletion after the message it deletes."""
    server_a, server_b = two_servers
    alice, _ = await join(server_a, "mix", people["alice"])
    bob, _ = await join(server_b, "mix", people["bob"])
    carol, _ = await join(server_a, "mix", people["carol"])
    watchers = [alice, bob, carol, (await join(server_b, "mix", people["alice"]))[0]]
    mine = [await say(alice, f"a{n}") for n in range(10)]

    async def burst(ws, name):
        for n in range(30):
            await ws.send(json.dumps({"type": "message", "content": f"{name}{n}"}))

    async def delete_all():
        for message_id in mine:
            await alice.send(json.dumps({"type": "delete", "id": message_id}))

    await asyncio.gather(burst(bob, "b"), burst(carol, "c"), delete_all())
    # Once one watcher has seen both bursts end and every deletion, all of it has its
    # place in the room's order; alice's "last" comes after all of it.
    observer = watchers[-1]
    observed, waiting = [], {"b29", "c29"}
    while waiting or len([k for k, _ in observed if k == "message_deleted"]) < len(mine):
        frame = await recv(observer)
        if frame["type"] == "message_deleted":
            observed.append(("message_deleted", frame["id"]))
        elif frame["type"] == "message" and frame["id"] > mine[-1]:
            observed.append(("message", frame["id"]))
            waiting.discard(frame["content"])
    await alice.send(json.dumps({"type": "message", "content": "last"}))
    sequences, contents = [], {}
    for ws in watchers:
        seen = observed if ws is observer else []
        while True:
            frame = await recv(ws)
            if frame["type"] == "message_deleted":
                seen.append(("message_deleted", frame["id"]))
            elif frame["type"] == "message" and frame["id"] > mine[-1]:
                seen.append(("message", frame["id"]))
                contents[frame["id"]] = frame["content"]
                if frame["content"] == "last":
                    break
        sequences.append(seen)
    for seen in sequences:
        sent = [item_id for kind, item_id in seen if kind == "message"]
        assert sent == sorted(sent), "ids do not rise"
        assert sorted(i for kind, i in seen if kind == "message_deleted") == mine
        assert len(sent) == 61
        for kind, message_id in seen:
            assert kind == "message" or message_id in mine
    def around_deletions(seen):  # what came just before each deletion
        return [contents.get(seen[i - 1][1], "del") if i else "-"
                for i, (kind, _) in enumerate(seen) if kind == "message_deleted"]
    assert all(seen == sequences[0] for seen in sequences), (
        "connections disagree on the order; before each deletion came "
        f"(on A: alice, carol; on B: bob, alice): {[around_deletions(s) for s in sequences]}")
    for ws in watchers:
        await ws.close()


async def test_an_owner_on_b_deletes_a_message_sent_on_a(two_servers, people):
    """The owner deletes someone else's message from the other process; both processes'
    connections get message_deleted, and it is gone from history on both."""
    server_a, server_b = two_servers
    status, body = await api("POST", server_a, "/api/rooms", people["alice"], {"name": "own"})
    assert status == 201, body
    bob, _ = await join(server_a, "own", people["bob"])
    alice, _ = await join(server_b, "own", people["alice"])
    await bob.send(json.dumps({"type": "message", "content": "oops"}))
    message = await recv_type(bob, "message")
    assert (await recv_type(alice, "message"))["id"] == message["id"]
    await alice.send(json.dumps({"type": "delete", "id": message["id"]}))
    for ws in (alice, bob):
        deleted = await recv_type(ws, "message_deleted")
        assert deleted["id"] == message["id"] and deleted["room"] == "own"
        assert deleted["timestamp"].endswith(("Z", "+00:00"))
        assert set(deleted) == {"type", "room", "id", "timestamp"}
    for server in (server_a, server_b):
        status, body = await api("GET", server, "/api/rooms/own/messages", people["carol"])
        assert status == 200 and body["messages"] == []
    await alice.close()
    await bob.close()


async def test_a_private_deletion_reaches_only_its_two_users_across_processes(two_servers,
                                                                              people):
    """A PRIV from alice (A) to bob (B), deleted by alice: bob's and alice's connections on
    both processes get message_deleted; carol's (on both) get nothing."""
    server_a, server_b = two_servers
    alice, _ = await join(server_a, "pm", people["alice"])
    alice_b, _ = await join(server_b, "pm", people["alice"])
    bob, _ = await join(server_b, "pm", people["bob"])
    carols = [(await join(server, "pm", people["carol"]))[0] for server in (server_a, server_b)]
    await alice.send(json.dumps({"type": "private", "target": "bob", "content": "psst"}))
    private = await recv_type(alice, "private")
    assert (await recv_type(bob, "private"))["id"] == private["id"]
    await alice.send(json.dumps({"type": "delete", "id": private["id"]}))
    for ws in (alice, alice_b, bob):
        assert (await recv_type(ws, "message_deleted"))["id"] == private["id"]
    # A message after the deletion reaches carol: she got nothing before it.
    await alice.send(json.dumps({"type": "message", "content": "public"}))
    for ws in carols:
        frame = await recv_type(ws, "message")
        assert frame["content"] == "public"
        assert "message_deleted" not in await kinds_until_pong(ws)
    for ws in (alice, alice_b, bob, *carols):
        await ws.close()


@in_a_thread
def admin_delete(message_ids: list[int]) -> None:
    """The admin's delete action on messages, from this (non-daphne) process."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    root = get_user_model().objects.create(username="root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(root)
    response = client.post("/admin/chat/message/", {
        "action": "delete_selected", "_selected_action": message_ids, "post": "yes"})
    assert response.status_code == 302, response.content[:500]


async def test_an_admin_deletion_reaches_both_processes(servers_on_this_layer, people):
    """Deleting two messages in the admin (another process than either daphne): every
    connection on both processes gets message_deleted for each."""
    server_a, server_b = servers_on_this_layer
    alice, _ = await join(server_a, "adm", people["alice"])
    bob, _ = await join(server_b, "adm", people["bob"])
    ids = [await say(alice, f"spam{n}") for n in range(3)]
    for message_id in ids:
        assert (await recv_type(bob, "message"))["id"] == message_id
    await asyncio.to_thread(admin_delete, ids[:2])
    for ws in (alice, bob):
        got = {(await recv_type(ws, "message_deleted", timeout=AT_ONCE + 2))["id"]
               for _ in range(2)}
        assert got == set(ids[:2])
    for server in (server_a, server_b):
        status, body = await api("GET", server, "/api/rooms/adm/messages", people["carol"])
        assert status == 200 and [m["id"] for m in body["messages"]] == ids[2:]
    await alice.close()
    await bob.close()
