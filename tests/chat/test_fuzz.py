"""Random and malformed frames on a live chat connection never break it or its room."""

import json
import random

import pytest
from django.test import override_settings

from tests.chat.helpers import open_chat, receive, request, send

pytestmark = pytest.mark.django_db(transaction=True)

FRAMES = 1500
CODES = {"invalid_json", "invalid_message", "unknown_type", "not_in_room", "invalid_token"}
ANSWERS = {"message", "private", "history", "pong", "error"}


def random_value(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bool", "null", "list", "dict", "big", "deep"]
    kind = rng.choice(kinds if depth < 3 else kinds[:5])
    if kind == "int":
        return rng.choice([0, -1, 1, 2**63, -(2**63), rng.randint(-10**6, 10**6)])
    if kind == "float":
        return rng.choice([0.5, -1e308, 1e308, 3.0])
    if kind == "str":
        alphabet = "ab \t\n\u3000\u200b\U0001f600\x00\\\"'<>&" + "\ud7ff"
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
    if kind == "bool":
        return rng.choice([True, False])
    if kind == "null":
        return None
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == "big":
        return "x" * rng.choice([3999, 4000, 4001, 20000])
    if kind == "deep":
        value = []
        for _ in range(rng.randint(10, 400)):
            value = [value]
        return value
    return {rng.choice(["type", "content", "ref", "target", "before", "limit", "token", "x"]):
            random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def random_frame(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.03:  # nesting far deeper than the parser's recursion limit
        depth = rng.randint(1000, 30000)
        return '{"type": "message", "content": ' + "[" * depth + "]" * depth + "}"
    if roll < 0.15:  # broken JSON
        text = json.dumps(random_value(rng))
        # (never empty: the test communicator cannot send an empty text frame)
        return text[: rng.randint(0, len(text))] + rng.choice(["}", "\x00", "{{", " "])
    if roll < 0.25:  # JSON but not an object
        return json.dumps(random_value(rng))
    frame = {"type": rng.choice(["message", "private", "history", "ping", "auth", "ack",
                                 "", "MESSAGE", "x" * 300, 5, None])}
    for key in rng.sample(["content", "ref", "target", "before", "limit", "token"], 3):
        if rng.random() < 0.6:
            frame[key] = random_value(rng)
    try:
        return json.dumps(frame)
    except RecursionError:
        return "{}"


@override_settings(WS_RATE_LIMIT=0)
async def test_fuzzed_frames_get_contract_answers_and_the_room_is_unaffected(
    make_user, token_for
):
    """1500 random frames: each gets a contract frame back; a bystander sees only real messages."""
    from channels.db import database_sync_to_async

    await database_sync_to_async(make_user)("fuzzer")
    await database_sync_to_async(make_user)("bystander")
    fuzzer, _, _ = await open_chat("fuzz", token_for("fuzzer"))
    bystander, _, _ = await open_chat("fuzz", token_for("bystander"))
    assert (await receive(fuzzer))["type"] == "user_joined"
    rng = random.Random(20261125)
    sent_messages = 0
    for _ in range(FRAMES):
        answer = await request(fuzzer, random_frame(rng))
        assert answer["type"] in ANSWERS, answer
        if answer["type"] == "error":
            assert answer["code"] in CODES and isinstance(answer["message"], str), answer
        if answer["type"] == "message":
            sent_messages += 1
    # The bystander got exactly the valid messages, in order, and nothing else.
    ids = []
    for _ in range(sent_messages):
        frame = await receive(bystander)
        assert frame["type"] == "message", frame
        ids.append(frame["id"])
    assert ids == sorted(ids)
    assert await bystander.receive_nothing(timeout=0.2)
    final = await request(fuzzer, {"type": "message", "content": "still alive"})
    assert (await receive(bystander))["id"] == final["id"]
    await send(fuzzer, "ping")
    assert await receive(fuzzer) == {"type": "pong"}
    await fuzzer.disconnect()
    await bystander.disconnect()
