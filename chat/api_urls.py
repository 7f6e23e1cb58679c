from django.urls import path

from chat import api

urlpatterns = [
    path("rooms/<str:room>/messages", api.room_messages, name="api-room-messages"),
]
