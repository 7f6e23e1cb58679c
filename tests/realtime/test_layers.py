"""The in-memory layer's group table is read only where it was tested, and never needed.

``Hub.publish(..., here_first=True)`` skips the layer when no other hub listens to
the group; only the in-memory layer can tell, through its group table.
"""

import importlib
import logging

import pytest
from channels.layers import InMemoryChannelLayer

from realtime import layers


def test_the_locked_channels_release_has_its_group_table_read():
    """Under the locked channels version the fast answer is on: fails if it silently is not."""
    assert layers.GROUP_TABLE_READABLE
    layer = InMemoryChannelLayer()
    layer.groups["room"] = {"mine": 0}
    assert layers.reaches_others(layer, "room", "mine") is False
    layer.groups["room"]["theirs"] = 0
    assert layers.reaches_others(layer, "room", "mine") is True


def test_an_untested_channels_release_always_goes_through_the_layer(monkeypatch, caplog):
    """Another channels version: one warning, and every message is published (slower, right)."""
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "4.4.0" if name == "channels" else real(name))
    with caplog.at_level(logging.WARNING, logger="realtime.layers"):
        readable = layers._group_table_readable()
    assert readable is False
    assert [r.getMessage() for r in caplog.records] == [
        "channels 4.4.0 is not in the tested range >=4.3,<4.4: every event is published "
        "through the in-memory layer, even with no other listener"]
    monkeypatch.setattr(layers, "GROUP_TABLE_READABLE", readable)
    layer = InMemoryChannelLayer()
    layer.groups["room"] = {"mine": 0}
    assert layers.reaches_others(layer, "room", "mine") is True


@pytest.mark.parametrize("layer", [object(), None])
def test_other_layers_may_always_reach_others(layer):
    """Redis layers (or anything else) cannot tell: the message goes through the layer."""
    assert layers.reaches_others(layer, "room", "mine") is True
