"""Process-local counters and gauges for operators, rendered as Prometheus text.

Each daphne process counts its own traffic; scrape every process (see
``deploy/``). Updating a metric is a dict operation on the event loop, cheap
enough for per-frame paths.
"""

from collections import defaultdict

HELP = {
    "realtime_connections_open": ("gauge", "Open WebSocket connections by endpoint."),
    "realtime_connections_total": ("counter", "Accepted WebSocket connections by endpoint."),
    "realtime_frames_in_total": ("counter", "Client frames received by endpoint."),
    "realtime_frames_out_total": ("counter", "Frames sent to clients by endpoint."),
    "realtime_auth_failures_total": ("counter", "Connections closed for bad credentials, by code."),
    "realtime_closes_total": ("counter", "Connections closed by the server, by close code."),
    "realtime_errors_total": ("counter", "Error frames sent, by error code."),
    "realtime_messages_stored_total": ("counter", "Chat messages stored."),
    "realtime_notifications_total": ("counter", "Notifications posted, by status."),
}

class Cell:
    """One labelled value; hot paths keep the cell and add to ``value`` directly."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


_values: dict[str, dict[tuple[tuple[str, str], ...], Cell]] = defaultdict(dict)


def counter(name: str, **labels: str) -> Cell:
    """The cell of ``name`` with ``labels``, created at zero."""
    cells = _values[name]
    key = tuple(sorted(labels.items()))
    cell = cells.get(key)
    if cell is None:
        cell = cells[key] = Cell()
    return cell


def inc(name: str, amount: float = 1, **labels: str) -> None:
    """Add ``amount`` to a counter (or a gauge, with a negative amount to lower it)."""
    counter(name, **labels).value += amount


def value(name: str, **labels: str) -> float:
    cell = _values[name].get(tuple(sorted(labels.items())))
    return cell.value if cell is not None else 0.0


def render() -> str:
    """Every metric in the Prometheus text exposition format (version 0.0.4)."""
    lines = []
    for name, (kind, text) in HELP.items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for labels, cell in sorted(_values.get(name, {}).items()):
            number = cell.value
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{name}{{{label_text}}} {number:g}" if labels else f"{name} {number:g}")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
