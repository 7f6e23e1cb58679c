#!/usr/bin/env python3
"""A terminal client for the chat and notifications WebSockets (see PROTOCOL.md).

Copy this file anywhere; it needs only Python 3.11+ and ``pip install websockets``
(13 or newer).

Chat in a room: each line read from stdin is sent as a message, and everything
the room sends is printed::

    python examples/chat_client.py --url ws://127.0.0.1:8000 --token "$TOKEN" general

    hello everyone            <- a message to the room
    /msg bob see you at 3     <- a private message to bob (he must be in the room)
    /delete 12                <- delete message #12 (yours; any, for owners, staff, moderators)
    /quit                     <- leave (end of input does the same)

Others typing show as ``* alice is typing…``, a deletion as ``* message 12 was deleted``.

Listen for notifications and acknowledge each one once printed::

    python examples/chat_client.py --url ws://127.0.0.1:8000 --token "$TOKEN" --notifications

Get a token with ``python manage.py issue_token USERNAME`` or ``POST /api/token``.
It travels in the ``Authorization`` header, not in the URL, so it stays out of
access logs.

Why it is written the way it is:

* Connections get lost (deploys, laptops sleeping). The client reconnects by
  itself with exponential backoff and jitter, so a restarted server is not hit
  by every client in the same instant, and it resumes with ``?since=<last id>``:
  ids rise strictly within a room, so the server sends exactly what was missed
  and the client skips any id it has already printed (no gap, no duplicate).
* Close codes 4001/4002/4003 mean the credentials are wrong or expired, and
  4004 that the room is private or you are banned from it (or were just
  removed or banned): retrying cannot help, so the client stops (exit status 2). 4008 (too fast)
  and 4013 (too many connections) wait longer before retrying.
* Notifications are delivered at least once, so they are deduplicated by id,
  and acknowledged in batches (a reconnect may bring a hundred at once and
  every frame counts against the server's rate limit).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

REFUSALS = {
    4001: "the token has expired: get a new one",
    4002: "the token was refused (bad signature, unknown or inactive user)",
    4003: "no credentials were sent",
    4004: "no access to this room (private and not a member, or banned; or just removed)",
}
SLOW_RETRY = {4008: 10.0, 4013: 30.0}  # close code -> minimum wait in seconds
STABLE_AFTER = 10.0  # a connection that lived this long resets the backoff
DRAIN_SECONDS = 5.0  # at the end of input, how long to wait for our messages to come back
Output = Callable[[str], None]


def _status(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Refused(Exception):
    """The server refused us for good (credentials, room access, or the handshake):
    retrying won't help."""


def next_delay(attempt: int, *, base: float = 1.0, cap: float = 30.0,
               rng: random.Random | None = None) -> float:
    """Backoff with "equal jitter": between half and all of ``min(cap, base * 2**attempt)``."""
    ceiling = min(cap, base * 2**attempt)
    return ceiling / 2 + (rng or random).random() * ceiling / 2


def chat_url(base_url: str, room: str, since: int | None) -> str:
    """The room's WebSocket URL, resuming after ``since`` when something was seen."""
    url = f"{base_url.rstrip('/')}/ws/chat/{room}/"
    return f"{url}?since={since}" if since else url


def local_time(timestamp: str) -> str:
    """An ISO 8601 UTC timestamp as local HH:MM:SS (the raw text if unparsable)."""
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return str(timestamp)
    return moment.astimezone().strftime("%H:%M:%S")


def format_frame(frame: dict[str, Any]) -> str | None:
    """One printable line for a server frame (``None`` for frames not worth printing)."""
    kind = frame.get("type")
    when = local_time(frame.get("timestamp", ""))
    if kind == "message":
        return f"[{when}] #{frame['id']} {frame['user_id']}: {frame['content']}"
    if kind == "private":
        return (f"[{when}] #{frame['id']} {frame['from']} -> {frame['to']} (private): "
                f"{frame['content']}")
    if kind in {"user_joined", "user_left"}:
        verb = "joined" if kind == "user_joined" else "left"
        return f"* {frame['user_id']} {verb}; here: {', '.join(frame.get('users', []))}"
    if kind == "typing":
        return f"* {frame['user_id']} is typing…"
    if kind == "message_deleted":
        return f"* message {frame['id']} was deleted"
    if kind == "error":
        return f"! error {frame.get('code')}: {frame.get('message')}"
    if kind == "notification":
        tag = " (broadcast)" if frame.get("broadcast") else ""
        data = json.dumps(frame.get("data"), ensure_ascii=False)
        return f"[{when}] notification #{frame['id']}{tag}: {data}"
    return None


def parse_line(line: str) -> dict[str, Any] | None:
    """A typed line as a client frame: ``/msg USER TEXT`` is private, ``/delete ID``
    deletes a message, the rest goes to the room."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    if text.startswith("/delete ") or text.strip() == "/delete":
        argument = text[len("/delete"):].strip().removeprefix("#")
        if argument.isascii() and argument.isdecimal() and int(argument) > 0:
            return {"type": "delete", "id": int(argument)}
        return None
    if text.startswith("/msg "):
        _, target, *rest = text.split(" ", 2)
        if target and rest and rest[0].strip():
            return {"type": "private", "target": target, "content": rest[0]}
        return None
    return {"type": "message", "content": text}


async def _connect(url: str, token: str) -> ClientConnection:
    return await connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                         open_timeout=10)


class ChatClient:
    """One user in one room, across as many connections as it takes."""

    def __init__(self, base_url: str, token: str, room: str, out: Output = print,
                 status: Output = _status) -> None:
        self.base_url = base_url
        self.token = token
        self.room = room
        self.out = out  # chat lines (stdout)
        self.status = status  # connection news (stderr)
        self.last_id = 0  # highest id printed: the next connection's ?since=
        self.outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.unconfirmed: dict[str, str] = {}  # ref -> content, until our copy comes back
        self.closing = False
        self.connections = 0
        self.heard = False  # the current connection got a frame (a refused one gets none)
        self._refs = 0

    def say(self, line: str) -> None:
        """Queue a typed line; it is sent as soon as a connection is live."""
        frame = parse_line(line)
        if frame is not None:
            self.outbox.put_nowait(frame)
        elif line.strip().split(" ", 1)[0] == "/delete":
            self.status("* usage: /delete ID (the number after # in a message line)")

    def finish(self) -> None:
        """Leave after what is already queued has been sent."""
        self.outbox.put_nowait(None)

    def show(self, frame: dict[str, Any]) -> None:
        """Print a frame, skipping a message id already printed."""
        if frame.get("type") == "history":
            resumed = self.last_id > 0
            for message in frame.get("messages", []):
                self.show(message)
            if frame.get("truncated") and resumed:
                self.status("* more was missed than the server resends; older lines skipped")
            return
        if frame.get("type") == "message" and isinstance(frame.get("ref"), str):
            self.unconfirmed.pop(frame["ref"], None)
        if frame.get("type") in {"message", "private"}:
            if frame["id"] <= self.last_id:
                return  # already printed (ids only rise within a room)
            self.last_id = frame["id"]
        line = format_frame(frame)
        if line is not None:
            self.out(line)

    async def run(self) -> None:
        """Connect, chat, reconnect with backoff until finished or refused (``Refused``)."""
        attempt = 0
        while not self.closing:
            url = chat_url(self.base_url, self.room, self.last_id)
            self.status(f"* connecting to {url}")
            started = asyncio.get_running_loop().time()
            min_wait = 0.0
            try:
                async with await _connect(url, self.token) as ws:
                    self.connections += 1
                    await self._session(ws)
                    return  # finished on purpose
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else 1006
                if code in REFUSALS:
                    raise Refused(f"closed with {code}: {REFUSALS[code]}") from None
                min_wait = SLOW_RETRY.get(code, 0.0)
                self.status(f"* connection lost (code {code})")
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                if isinstance(exc, InvalidStatus) and exc.response.status_code in {403, 404}:
                    raise Refused(f"handshake refused: HTTP {exc.response.status_code}") from None
                self.status(f"* cannot connect: {exc}")
            if self.unconfirmed:
                # Sent, but the connection went before our copy came back: if the server
                # stored them they come back through ?since=, else they are lost.
                for content in self.unconfirmed.values():
                    self.status(f"* not confirmed (check above after reconnecting): {content}")
                self.unconfirmed.clear()
            if asyncio.get_running_loop().time() - started >= STABLE_AFTER:
                attempt = 0
            delay = max(next_delay(attempt), min_wait)
            attempt += 1
            self.status(f"* reconnecting in {delay:.1f} s")
            await asyncio.sleep(delay)

    async def _session(self, ws: ClientConnection) -> None:
        """Print what arrives and send what is typed, until the input ends."""
        self.heard = False
        reader = asyncio.create_task(self._read(ws))
        try:
            while True:
                getter = asyncio.create_task(self.outbox.get())
                done, _ = await asyncio.wait({getter, reader},
                                             return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    getter.cancel()
                    reader.result()  # raises ConnectionClosed
                    return
                frame = getter.result()
                if frame is None:
                    self.closing = True
                    await self._drain(reader)
                    return
                if frame["type"] == "message":
                    self._refs += 1
                    frame = {**frame, "ref": f"c{self._refs}"}
                try:
                    await ws.send(json.dumps(frame))
                except ConnectionClosed:
                    self.outbox.put_nowait(frame)  # never sent: send after reconnecting
                    raise
                if "ref" in frame:
                    self.unconfirmed[frame["ref"]] = frame["content"]
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await reader

    async def _drain(self, reader: asyncio.Task) -> None:
        """Before leaving, wait (a little) for the server's first frame and for our own
        messages to come back; a refusal (4001-4004) in the meantime is raised."""
        deadline = asyncio.get_running_loop().time() + DRAIN_SECONDS
        while (self.unconfirmed or not self.heard) and not reader.done():
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        closed = reader.exception() if reader.done() else None
        code = closed.rcvd.code if isinstance(closed, ConnectionClosed) and closed.rcvd else None
        if code in REFUSALS:
            raise closed

    async def _read(self, ws: ClientConnection) -> None:
        async for text in ws:
            self.heard = True
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.show(json.loads(text))
        raise ConnectionClosed(ws.close_rcvd, ws.close_sent)


class NotificationListener:
    """Prints notifications once each and acknowledges them."""

    def __init__(self, base_url: str, token: str, out: Output = print,
                 status: Output = _status) -> None:
        self.url = f"{base_url.rstrip('/')}/ws/notifications/"
        self.token = token
        self.out = out
        self.status = status
        self.seen: set[int] = set()
        self._order: deque[int] = deque()

    def _remember(self, note_id: int) -> bool:
        """True the first time an id is seen (the memory is bounded)."""
        if note_id in self.seen:
            return False
        self.seen.add(note_id)
        self._order.append(note_id)
        if len(self._order) > 10_000:
            self.seen.discard(self._order.popleft())
        return True

    async def run(self) -> None:
        """Listen and ack, reconnecting with backoff, until refused (``Refused``)."""
        attempt = 0
        while True:
            started = asyncio.get_running_loop().time()
            min_wait = 0.0
            try:
                async with await _connect(self.url, self.token) as ws:
                    self.status(f"* listening on {self.url}")
                    await self._session(ws)
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else 1006
                if code in REFUSALS:
                    raise Refused(f"closed with {code}: {REFUSALS[code]}") from None
                min_wait = SLOW_RETRY.get(code, 0.0)
                self.status(f"* connection lost (code {code})")
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                if isinstance(exc, InvalidStatus) and exc.response.status_code in {403, 404}:
                    raise Refused(f"handshake refused: HTTP {exc.response.status_code}") from None
                self.status(f"* cannot connect: {exc}")
            if asyncio.get_running_loop().time() - started >= STABLE_AFTER:
                attempt = 0
            delay = max(next_delay(attempt), min_wait)
            attempt += 1
            self.status(f"* reconnecting in {delay:.1f} s")
            await asyncio.sleep(delay)

    async def _session(self, ws: ClientConnection) -> None:
        while True:
            frames = [json.loads(await ws.recv())]
            # Take whatever else is already waiting, then ack it all in one frame.
            while True:
                try:
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), 0.05)))
                except TimeoutError:
                    break
            to_ack = []
            for frame in frames:
                if frame.get("type") != "notification":
                    line = format_frame(frame)
                    if line:
                        self.out(line)
                    continue
                if self._remember(frame["id"]):
                    self.out(format_frame(frame) or "")
                if not frame.get("broadcast"):
                    to_ack.append(frame["id"])
            if to_ack:
                await ws.send(json.dumps({"type": "ack", "ids": to_ack}))


def _stdin_lines(loop: asyncio.AbstractEventLoop, client: ChatClient) -> None:
    """Feed stdin to the client from a thread (works the same on every platform)."""
    for line in sys.stdin:
        if line.strip() == "/quit":
            break
        loop.call_soon_threadsafe(client.say, line)
    loop.call_soon_threadsafe(client.finish)


async def _main(args: argparse.Namespace) -> int:
    def out(line: str) -> None:
        print(line, flush=True)

    try:
        if args.notifications:
            await NotificationListener(args.url, args.token, out).run()
            return 0
        client = ChatClient(args.url, args.token, args.room, out)
        loop = asyncio.get_running_loop()
        threading.Thread(target=_stdin_lines, args=(loop, client), daemon=True).start()
        await client.run()
        return 0
    except Refused as exc:
        print(f"! {exc}", file=sys.stderr, flush=True)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run until the input ends (chat) or Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("room", nargs="?", help="room name ([A-Za-z0-9_-]{1,64})")
    parser.add_argument("--url", default="ws://127.0.0.1:8000",
                        help="server base URL (default: %(default)s)")
    parser.add_argument("--token", default=os.environ.get("CHAT_TOKEN"),
                        help="JWT (default: $CHAT_TOKEN)")
    parser.add_argument("--notifications", action="store_true",
                        help="listen for notifications instead of chatting")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a token is needed: --token or $CHAT_TOKEN")
    if not args.notifications and not args.room:
        parser.error("a room is needed (or --notifications)")
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
