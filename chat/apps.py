from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from chat import presence
        from chat.fanout import announce_departures
        from chat.sequencer import end_leases
        from realtime import registry
        from realtime.hub import departure_handlers
        from realtime.shutdown import shutdown_handlers

        registry.extensions.setdefault(presence.APP, presence.attach)
        if announce_departures not in departure_handlers:
            departure_handlers.append(announce_departures)
        if end_leases not in shutdown_handlers:
            shutdown_handlers.append(end_leases)
