"""The CPU time of one history page (``chat.selectors.history_page``), as a join reads it.

    [DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_rt] \\
        .venv/bin/python bench/history_cost.py [--select-related]

Fills a room with 1,000 messages (one in ten private) in a migrated database and
prints the CPU time of this thread (what holds the GIL the event loop needs) per
page of 20, 100 and 500 messages. ``--select-related`` also times the read the
project made before a936fed (``Message`` instances with ``select_related``),
checks that both give the same items, and prints the ratio. Without DATABASE_URL
it runs on a fresh SQLite file.
"""

import argparse
import time

import scratch_django  # bench/, this script's directory

LIMITS = (20, 100, 500)
CALLS = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--select-related", action="store_true")
    args = parser.parse_args()
    scratch_django.setup("history_cost")
    from django.contrib.auth import get_user_model

    from chat import protocol, selectors
    from chat.models import Message, Room
    from realtime.protocol import timestamp

    users = get_user_model().objects
    sender, _ = users.get_or_create(username="history-cost-a")
    reader, _ = users.get_or_create(username="history-cost-b")
    room, _ = Room.objects.get_or_create(name="history-cost")
    missing = 1000 - Message.objects.filter(room=room).count()
    Message.objects.bulk_create([
        Message(room=room, sender=sender, recipient=reader if n % 10 == 0 else None,
                content=f"message {n} " + "x" * 80)
        for n in range(max(0, missing))
    ])

    def with_instances(limit: int) -> tuple[list[dict], bool]:
        messages = selectors.visible_messages(room.pk, reader).select_related(
            "sender", "recipient")
        newest = list(messages.order_by("-id")[: limit + 1])
        items = []
        for m in reversed(newest[:limit]):
            moment = timestamp(m.created_at)
            items.append(
                protocol.message_item(m.pk, room.name, m.sender.username, m.content, moment)
                if m.recipient_id is None else
                protocol.private_item(m.pk, room.name, m.sender.username,
                                      m.recipient.username, m.content, moment))
        return items, len(newest) > limit

    def plain_values(limit: int) -> tuple[list[dict], bool]:
        return selectors.history_page(room.pk, room.name, reader, limit=limit)

    def cpu_per_page(read, limit: int) -> float:
        read(limit)
        start = time.thread_time()
        for _ in range(CALLS):
            read(limit)
        return 1e3 * (time.thread_time() - start) / CALLS

    for limit in LIMITS:
        now = cpu_per_page(plain_values, limit)
        line = f"page of {limit:3d}: {now:.2f} ms CPU"
        if args.select_related:
            assert with_instances(limit) == plain_values(limit), "the two reads differ"
            before = cpu_per_page(with_instances, limit)
            line += f"; with instances and select_related {before:.2f} ms ({before / now:.1f}x)"
        print(line)


if __name__ == "__main__":
    main()
