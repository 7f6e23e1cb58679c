"""Each transactional test starts on an empty database (tests/conftest.py's teardown).

The two tests below run in this order in one process (pytest-xdist's ``loadfile``
keeps a file together): what the first stores is gone when the second starts, and
the content types and permissions that migrations made are still there.
"""

import django
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.test import TransactionTestCase

from chat.models import Room
from tests.conftest import FAST_TEARDOWN_DJANGO, empty_databases_after_test

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_test_stores_rows():
    get_user_model().objects.create(username="left-behind")
    Room.objects.get_or_create(name="left-behind")
    assert get_user_model().objects.filter(username="left-behind").exists()


def test_the_next_test_finds_them_gone_and_the_migrations_rows_kept():
    assert not get_user_model().objects.exists()
    assert not Room.objects.filter(name="left-behind").exists()
    assert ContentType.objects.filter(app_label="chat", model="room").exists()
    assert Permission.objects.filter(codename="moderate_room").exists()


def test_the_fast_teardown_is_on_for_the_tested_django():
    """On the Django version it was read against, the suite empties tables itself;
    if this fails, the suite silently went back to Django's slower flush."""
    if django.VERSION[:2] != FAST_TEARDOWN_DJANGO:
        pytest.skip(f"Django {django.get_version()}: Django's own flush runs")
    assert TransactionTestCase._fixture_teardown is empty_databases_after_test
