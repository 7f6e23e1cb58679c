from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from chat import presence
        from chat.fanout import announce_departures
        from realtime import registry
        from realtime.hub import departure_handlers

        registry.extensions.setdefault(presence.APP, presence.attach)
        if announce_departures not in departure_handlers:
            departure_handlers.append(announce_departures)
