"""``manage.py issue_token USERNAME [--create] [--staff] [--ttl SECONDS]``."""

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from realtime import tokens


class Command(BaseCommand):
    help = "Print a JWT for USERNAME (alone on the last line of stdout)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--create", action="store_true", help="create the user if missing")
        parser.add_argument("--staff", action="store_true", help="mark the user staff")
        parser.add_argument("--ttl", type=int, default=None,
                            help="lifetime in seconds (default: JWT_TTL, one hour)")

    def handle(self, *args, username: str, create: bool, staff: bool, ttl: int | None,
               **options) -> None:
        if ttl is not None and ttl <= 0:
            raise CommandError("--ttl must be a positive number of seconds")
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            if not create:
                raise CommandError(f"no user {username!r} (use --create to make one)")
            try:
                # The same rules as the admin's (allowed characters, at most 150).
                User._meta.get_field(User.USERNAME_FIELD).clean(username, None)
            except ValidationError as exc:
                reason = " ".join(exc.messages)
                raise CommandError(f"cannot create {username!r}: {reason}") from None
            user = User.objects.create(username=username, password=make_password(None))
            self.stderr.write(f"created user {username!r}")
        if staff and not user.is_staff:
            user.is_staff = True
            user.save(update_fields=["is_staff"])
        if not user.is_active:
            self.stderr.write(f"warning: user {username!r} is inactive; the token will be refused")
        try:
            token, _expires_at = tokens.issue(user.get_username(), ttl)
        except OverflowError:
            raise CommandError("--ttl is too large") from None
        self.stdout.write(token)
