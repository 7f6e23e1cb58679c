from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # A graceful stop stores the acks still waiting for their batch (ACK_DELAY_SECONDS).
        from notifications import writer
        from realtime.shutdown import shutdown_handlers

        if writer.finish not in shutdown_handlers:
            shutdown_handlers.append(writer.finish)
