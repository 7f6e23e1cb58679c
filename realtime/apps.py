from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    """The engine: management commands, user revocation, session ends."""

    name = "realtime"
    verbose_name = "Real-time service"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.signals import user_logged_out
        from django.db.models.signals import post_delete, post_save

        from realtime import revocation, sessions
        from realtime.hub import start_handlers, sweep_handlers

        user_model = get_user_model()
        post_save.connect(revocation.on_user_saved, sender=user_model,
                          dispatch_uid="realtime-revoke-save")
        post_delete.connect(revocation.on_user_deleted, sender=user_model,
                            dispatch_uid="realtime-revoke-delete")
        if revocation.sweep not in sweep_handlers:
            sweep_handlers.append(revocation.sweep)
        # Session-cookie WebSockets end with their session (logout, expiry, flush).
        user_logged_out.connect(sessions.on_user_logged_out, dispatch_uid="realtime-logout")
        if sessions.start not in start_handlers:
            start_handlers.append(sessions.start)
