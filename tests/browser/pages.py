"""Helpers of the browser tests: the chat page's locators and actions, and a plain client."""

import asyncio
import itertools
import json
import re

import websockets
from playwright.async_api import expect

_refs = itertools.count(1)


class WsChat:
    """A plain ``websockets`` client of ``/ws/chat/<room>/`` (token in the query)."""

    def __init__(self, ws) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, server, token: str, room: str) -> "WsChat":
        ws = await websockets.connect(f"{server.ws_url}/ws/chat/{room}/?token={token}")
        client = cls(ws)
        assert (await client.recv())["type"] == "history"
        assert (await client.recv())["type"] == "user_joined"
        return client

    async def recv(self) -> dict:
        return json.loads(await asyncio.wait_for(self.ws.recv(), 10))

    async def say(self, content: str) -> int:
        """Send a room message and wait for its own copy; return its id."""
        ref = f"t{next(_refs)}"
        await self.ws.send(json.dumps({"type": "message", "content": content, "ref": ref}))
        while True:
            frame = await self.recv()
            assert frame["type"] != "error", frame
            if frame["type"] == "message" and frame.get("ref") == ref:
                return frame["id"]

    async def close(self) -> None:
        await self.ws.close()


def contents(page):
    return page.locator("#messages .msg-content")


def exactly(text: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(text)}$")


async def wait_live(page) -> None:
    await expect(page.locator("#conn-state")).to_have_attribute("data-state", "live")


async def say(page, text: str) -> None:
    await page.fill("#message-input", text)
    await page.press("#message-input", "Enter")


async def shown_once(page, text: str) -> None:
    """Wait until ``text`` is a message on the page, then require exactly one copy."""
    await expect(contents(page).filter(has_text=exactly(text))).to_have_count(1)
