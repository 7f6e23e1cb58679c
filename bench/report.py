"""One ratio table (project/seed) from one or more ``bench/out/<stamp>/results.json``.

    python bench/report.py bench/out/20261125T051553Z bench/out/20261125T053720Z ...

A later directory's figure for the same scenario, layer and server replaces an earlier one.
"""

import json
import statistics
import sys
from pathlib import Path

HEAD = {
    "echo": ("msgs_per_s", "rtt_p99_ms"),
    "fanout100": ("deliveries_per_s", "last_p99_ms"),
    "fanout1000": ("deliveries_per_s", "last_p99_ms"),
    "notify": ("notify_per_s", "deliver_p99_ms"),
    "connections": ("rss_per_conn_kib", "handshake_p99_ms"),
}


def valid(run: dict) -> bool:
    """A run that measured what it meant to: every member connected, nothing broke."""
    m = run.get("metrics")
    if not m or run.get("connect_errors"):
        return False
    return m.get("delivered_frac") is None or m["delivered_frac"] >= 0.999 or run["label"] != "seed"


def medians(r: dict) -> dict:
    """Medians per server over its valid runs (loadgen's own summary counts every run).

    Runs of the reference that broke (the tutorial's broadcast lets one failed send kill
    the sender's handler) are left out; a project run is kept whatever it did, its loss
    is the point.
    """
    out = {}
    for label in r["median"]:
        runs = [x for x in r.get("runs", []) if x.get("label") == label and valid(x)]
        if not runs:
            continue
        keys = {k for x in runs for k in x["metrics"]}
        out[label] = {k: statistics.median([x["metrics"][k] for x in runs
                                            if x["metrics"].get(k) is not None] or [0])
                      for k in keys}
        out[label]["runs"] = len(runs)
        out[label]["excluded"] = sum(1 for x in r.get("runs", []) if x.get("label") == label) \
            - len(runs)
    return out


def rows(paths: list[str]) -> dict:
    table: dict = {}
    for path in paths:
        data = json.loads((Path(path) / "results.json").read_text())
        for r in data["results"]:
            if r.get("profile_run") or "seed" not in (r.get("median") or {}):
                continue
            med_all = medians(r)
            seed = med_all.get("seed")
            if seed is None:
                continue
            for label, med in med_all.items():
                if label != "seed":
                    table[(r["scenario"], r["layer"], label)] = (seed, med, r, Path(path).name)
    return table


def fmt(x) -> str:
    return "-" if x is None else (f"{x:.3g}" if isinstance(x, float) and x < 10 else f"{x:,.0f}"
                                  if isinstance(x, int | float) else str(x))


def ratio(a, b) -> str:
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return f"{a / b:.2f}x"
    return "-"


def render(table: dict) -> str:
    out = ["| scenario | layer | server | project | seed | ratio | p99 project / seed (ms) | "
           "ratio per server CPU | loss (project) | runs project/seed | load 1m | dir |",
           "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for (scenario, layer, label), (seed, med, r, where) in sorted(table.items()):
        head, p99 = HEAD[scenario]
        per_cpu = "-"
        if med.get("server_cpu_pct") and seed.get("server_cpu_pct") and head != "rss_per_conn_kib":
            per_cpu = ratio(med[head] / med["server_cpu_pct"], seed[head] / seed["server_cpu_pct"])
        excl = f" ({seed['excluded']} seed runs broke)" if seed["excluded"] else ""
        loss = "-"
        if "delivered_frac" in med:
            loss = f"{1 - med['delivered_frac']:.2%}"
        elif scenario == "notify":
            lost = [x.get("lost", 0) for x in r.get("runs", []) if x.get("label") == label]
            loss = str(sum(lost))
        out.append(
            f"| {scenario} | {layer} | {label.removeprefix('project-')} | {fmt(med.get(head))} | "
            f"{fmt(seed.get(head))} | {ratio(med.get(head), seed.get(head))} | "
            f"{fmt(med.get(p99))} / {fmt(seed.get(p99))} | {per_cpu} | {loss} | "
            f"{med['runs']}/{seed['runs']}{excl} | {r['loadavg_before'][0]:.1f} | {where} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(rows(sys.argv[1:])))
