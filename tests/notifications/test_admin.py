"""The Notification admin: list, search by username and data text, delivered filter."""

import html
import json
import re

import pytest
from django.test import Client
from django.utils import timezone

from notifications import api
from notifications.models import Notification

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/admin/notifications/notification/"


@pytest.fixture
def admin_client_(make_user) -> Client:
    admin = make_user("root", staff=True)
    admin.is_superuser = True
    admin.save()
    client = Client()
    client.force_login(admin)
    return client


def listed(client: Client, query: str = "") -> set[int]:
    response = client.get(URL + query)
    assert response.status_code == 200
    return {row.pk for row in response.context["cl"].result_list}


def test_admin_lists_searches_and_filters(admin_client_, make_user):
    """The changelist searches usernames and data text and filters delivered/queued/broadcast."""
    bob, carol = make_user("bea"), make_user("cyd")
    queued = Notification.objects.create(user=bob, data={"text": "invoice ready"})
    delivered = Notification.objects.create(user=carol, data={"text": "welcome"},
                                            delivered_at=timezone.now())
    broadcast_id, _ = api.broadcast({"text": "maintenance"})
    assert listed(admin_client_) == {queued.pk, delivered.pk, broadcast_id}
    assert listed(admin_client_, "?q=invoice") == {queued.pk}
    assert listed(admin_client_, "?q=cyd") == {delivered.pk}
    assert listed(admin_client_, "?delivered=no") == {queued.pk}
    assert listed(admin_client_, "?delivered=yes") == {delivered.pk, broadcast_id}
    assert listed(admin_client_, "?broadcast__exact=1") == {broadcast_id}
    assert admin_client_.get(f"{URL}{queued.pk}/change/").status_code == 200


def test_str_says_target_and_state(make_user):
    """__str__ names the id, the recipient (or broadcast) and whether it is queued."""
    bob = make_user("bea")
    note = Notification.objects.create(user=bob, data={})
    assert str(note) == f"#{note.pk} to bea (queued)"
    note.delivered_at = timezone.now()
    assert str(note) == f"#{note.pk} to bea (delivered)"
    moment = timezone.now()
    assert str(Notification(pk=5, data={}, broadcast=True, delivered_at=moment)) == (
        "#5 broadcast (delivered)")


def test_changelist_shows_data_as_json(admin_client_, make_user):
    """The data column is the JSON (double quotes, escaped by the admin), not a Python repr."""
    Notification.objects.create(user=make_user("bea"), data={"text": "hi <b>", "ok": True})
    page = admin_client_.get(URL).content.decode()
    (cell,) = re.findall(r'<td class="field-short_data">(.*?)</td>', page)
    # PostgreSQL's jsonb keeps keys in its own order: compare the JSON, and its escaping.
    assert json.loads(html.unescape(cell)) == {"text": "hi <b>", "ok": True}
    assert "&quot;ok&quot;: true" in cell and "&lt;b&gt;" in cell


def test_delete_selected_deletes_the_selected_and_only_them(admin_client_, make_user):
    """The "delete selected" action (its confirmation posted) deletes queued, delivered and
    broadcast rows alike, and leaves the others."""
    bea, cyd = make_user("bea"), make_user("cyd")
    chosen = [Notification.objects.create(user=bea, data={"n": 0}),
              Notification.objects.create(user=cyd, data={"n": 1}, delivered_at=timezone.now()),
              Notification.objects.create(user=None, broadcast=True, data={"n": 2},
                                          delivered_at=timezone.now())]
    kept = Notification.objects.create(user=bea, data={"n": 3})
    response = admin_client_.post(URL, {
        "action": "delete_selected", "post": "yes",
        "_selected_action": [str(row.pk) for row in chosen],
    })
    assert response.status_code == 302
    assert list(Notification.objects.values_list("pk", flat=True)) == [kept.pk]
