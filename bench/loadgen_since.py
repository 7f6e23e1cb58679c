"""The shared loadgen, with ``?since=0`` on the project's chat URLs.

The reconnect storm of issue 20 is every chat client coming back at once and
asking for what it missed. ``../shared/bench/loadgen.py`` has no such option, so
this wrapper adds the query to ``Target.chat_url`` and runs loadgen's own
``main``; its workers are forked, so they inherit the change. The reference
app ignores the query.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "bench"))

import loadgen

_chat_url = loadgen.Target.chat_url


def chat_url(self, room: str, user: str):
    url, headers = _chat_url(self, room, user)
    if self.kind == "project":
        url += ("&" if "?" in url else "?") + "since=0"
    return url, headers


loadgen.Target.chat_url = chat_url

if __name__ == "__main__":
    loadgen.main()
