"""Message.room loses its own index: the (room, id) index serves every lookup by room.

Only that index is dropped. Django's own way (an ``AlterField``) rebuilds the whole
message table on SQLite, and the rebuilt table would restart its id sequence at the
highest id left: ids of deleted newest messages could come back, and a client that
saw one of them (``?since=``) would miss the new message that takes it.
"""

import django.db.models.deletion
from django.db import migrations, models

#: The name Django gave the index in 0001 (the same on SQLite and PostgreSQL).
ROOM_INDEX = "chat_message_room_id_5e7d8d78"


class Migration(migrations.Migration):

    dependencies = [
        ("chat", "0002_rooms_access_moderation_read_state"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="message",
                    name="room",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="messages",
                        to="chat.room",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    # IF EXISTS: a database whose index Django named otherwise still
                    # migrates (it keeps that index, which costs only speed).
                    f'DROP INDEX IF EXISTS "{ROOM_INDEX}"',
                    reverse_sql=f'CREATE INDEX "{ROOM_INDEX}" ON "chat_message" ("room_id")',
                ),
            ],
        ),
        migrations.AlterField(
            model_name="room",
            name="last_message_at",
            field=models.DateTimeField(
                blank=True,
                db_index=True,
                help_text="Time of the latest message, to within a second (chat.store).",
                null=True,
            ),
        ),
    ]
