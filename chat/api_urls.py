"""The chat's JSON API (included under ``api/``)."""

from django.urls import path

from chat import api

urlpatterns = [
    path("rooms", api.rooms, name="api-rooms"),
    path("rooms/<str:room>", api.room, name="api-room"),
    path("rooms/<str:room>/members", api.members, name="api-room-members"),
    path("rooms/<str:room>/members/<str:user_id>", api.member, name="api-room-member"),
    path("rooms/<str:room>/bans", api.bans, name="api-room-bans"),
    path("rooms/<str:room>/bans/<str:user_id>", api.ban, name="api-room-ban"),
    path("rooms/<str:room>/messages", api.room_messages, name="api-room-messages"),
]
