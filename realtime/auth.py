"""Password checks, all throttled: ``POST /api/token``, ``/accounts/login/``, ``/admin/login/``.

:class:`ThrottledModelBackend` is the first of ``AUTHENTICATION_BACKENDS``, so
every ``django.contrib.auth.authenticate`` with a username and password goes
through :mod:`realtime.throttle`. A refused or failed check raises
``PermissionDenied``, which makes ``authenticate`` return ``None`` without asking
the next backend (``ModelBackend``, listed only so that sessions it made keep
working). A refusal also marks the request (``login_throttled``) so that the
caller can say so: 429 on the API, a form error on the login pages.
"""

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import PermissionDenied, ValidationError

from realtime import throttle


def is_throttled(request) -> bool:
    """Whether the last ``authenticate`` of ``request`` was refused by the throttle."""
    return getattr(request, "login_throttled", False)


class ThrottledModelBackend(ModelBackend):
    """Django's username/password check behind the login throttle."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None:
            username = kwargs.get(get_user_model().USERNAME_FIELD)
        if username is None or password is None:
            return None
        address = request.META.get("REMOTE_ADDR") if request is not None else None
        keys = throttle.keys_for(username, address)
        reservation = throttle.reserve(keys)
        if reservation is None:
            if request is not None:
                request.login_throttled = True
            raise PermissionDenied(throttle.MESSAGE)
        try:
            user = super().authenticate(request, username=username, password=password, **kwargs)
        except BaseException:
            throttle.settle(keys, reservation, failed=False)
            raise
        throttle.settle(keys, reservation, failed=user is None)
        if user is None:
            raise PermissionDenied  # stop here: no other backend checks this password
        return user


class ThrottledFormMixin:
    """A login form that says when the throttle refused the attempt."""

    def get_invalid_login_error(self):
        if is_throttled(self.request):
            return ValidationError(
                "Too many failed logins. Try again in 5 minutes.", code="throttled"
            )
        return super().get_invalid_login_error()


class LoginForm(ThrottledFormMixin, AuthenticationForm):
    """The form of ``/accounts/login/``."""


class AdminLoginForm(ThrottledFormMixin, AdminAuthenticationForm):
    """The form of ``/admin/login/``."""
