#!/usr/bin/env python3
"""Fetch the data of a few panels of grafana/dashboards/fanout.json from Prometheus.

For each chosen panel it takes the panel's own PromQL (every target's `expr`) and
`legendFormat` from the dashboard JSON -- nothing is re-typed here -- substitutes the
dashboard's variables the way Grafana does for this dashboard (`$node` = All = `.*`,
`$__rate_interval` = max($__interval + scrape interval, 4 x scrape interval)), runs
`/api/v1/query_range` over the window, and writes everything as a JavaScript file
(`window.SNAPSHOT = {...}`) that index.html draws. Fetching here, server-side, means the
page needs no access to Prometheus at all (no CORS, no proxy): it is static.

Standard library only. Loopback Prometheus only.

  fetch.py --prometheus http://127.0.0.1:9090 --start <unix> --end <unix> --out data.js
"""

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Panels of grafana/dashboards/fanout.json shown by index.html, by id, in page order.
STAT_PANELS = [2, 3, 4, 5, 6, 7]  # the Overview row
GRAPH_PANELS = [
    9,   # Connections by transport
    11,  # Connects and disconnects /s (and refusals)
    14,  # In: messages accepted /s
    15,  # Out: local emits /s by event (+ backplane entries read)
    18,  # Delivery latency p50 / p99
    20,  # Reader lag (seconds behind)
    24,  # Redis command latency p99 by op
    27,  # Lua script calls /s
    30,  # Presence transitions /s
    33,  # Connect refusals /s by reason
    35,  # Failed answers /s by code
    39,  # Messages accepted /s per node
]

# The scrape interval of the generated .run/prometheus.yml (and of deploy/prometheus.yml);
# Grafana's datasource has timeInterval: 5s to match.
SCRAPE_SECS = 5


def duration(secs: float) -> str:
    return f"{int(round(secs))}s"


def all_panels(dashboard: dict):
    for p in dashboard.get("panels", []):
        yield p
        for q in p.get("panels", []) or []:  # collapsed rows keep their panels inside
            yield q


def prom_get(base: str, path: str, params: dict) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]


def legend(fmt: str, labels: dict) -> str:
    if not fmt:
        # Grafana's default: the series' labels, or the expression when it has none.
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return f"{{{inner}}}" if inner else ""
    return re.sub(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--dashboard", default=str(ROOT / "grafana/dashboards/fanout.json"))
    ap.add_argument("--start", type=float, help="unix seconds (default: end - 10 min)")
    ap.add_argument("--end", type=float, help="unix seconds (default: now)")
    ap.add_argument("--points", type=int, default=300, help="about this many points per series")
    ap.add_argument("--out", required=True, help="the JavaScript file to write")
    args = ap.parse_args()

    host = urllib.parse.urlparse(args.prometheus).hostname or ""
    if not (host == "localhost" or host == "::1" or host.startswith("127.")):
        print(f"fetch.py: {args.prometheus} is not a loopback URL; refusing", file=sys.stderr)
        return 2

    end = args.end or time.time()
    start = args.start or end - 600
    if end <= start:
        print("fetch.py: --end must be after --start", file=sys.stderr)
        return 2
    # Grafana: $__interval = range / max data points, never below the datasource's
    # timeInterval (the scrape interval); $__rate_interval = max($__interval + scrape, 4 x scrape).
    step = max(SCRAPE_SECS, math.ceil((end - start) / args.points))
    rate_interval = max(step + SCRAPE_SECS, 4 * SCRAPE_SECS)
    variables = {
        "$__rate_interval": duration(rate_interval),
        "$__interval": duration(step),
        "$node": ".*",  # the `node` variable on All (its allValue)
    }

    dashboard = json.loads(Path(args.dashboard).read_text())
    by_id = {p.get("id"): p for p in all_panels(dashboard)}

    def run_panel(pid: int) -> dict:
        panel = by_id.get(pid)
        if panel is None:
            raise SystemExit(f"fetch.py: panel id {pid} is not in {args.dashboard}")
        out = {
            "id": pid,
            "type": panel.get("type"),
            "title": panel.get("title"),
            "unit": panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short"),
            "targets": [],
            "series": [],
        }
        for t in panel.get("targets", []):
            expr = t["expr"]
            for k in sorted(variables, key=len, reverse=True):
                expr = expr.replace(k, variables[k])
            out["targets"].append({"refId": t.get("refId"), "expr": t["expr"], "query": expr})
            data = prom_get(
                args.prometheus,
                "/api/v1/query_range",
                {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"},
            )
            for r in data.get("result", []):
                name = legend(t.get("legendFormat", ""), r.get("metric", {})) or panel.get("title")
                points = []
                for ts, v in r.get("values", []):
                    f = float(v)
                    points.append([float(ts), None if math.isnan(f) or math.isinf(f) else f])
                out["series"].append({"name": name, "refId": t.get("refId"), "points": points})
        out["series"].sort(key=lambda s: (s["refId"] or "", s["name"]))
        return out

    targets = prom_get(args.prometheus, "/api/v1/targets", {"state": "active"})
    snapshot = {
        "dashboard": {"uid": dashboard.get("uid"), "title": dashboard.get("title")},
        "prometheus": args.prometheus,
        "generatedAt": time.time(),
        "start": start,
        "end": end,
        "step": step,
        "variables": variables,
        "targets": [
            {
                "job": t["labels"].get("job"),
                "instance": t["labels"].get("instance"),
                "health": t.get("health"),
                "scrapeUrl": t.get("scrapeUrl"),
            }
            for t in targets.get("activeTargets", [])
        ],
        "stats": [run_panel(pid) for pid in STAT_PANELS],
        "graphs": [run_panel(pid) for pid in GRAPH_PANELS],
    }

    empty = [p["title"] for p in snapshot["stats"] + snapshot["graphs"]
             if not any(v is not None for s in p["series"] for _, v in s["points"])]
    Path(args.out).write_text(
        "// GENERATED by tools/dashboard-snapshot/fetch.py -- data for index.html\n"
        f"window.SNAPSHOT = {json.dumps(snapshot, separators=(',', ':'))};\n"
    )
    n = sum(len(p["series"]) for p in snapshot["stats"] + snapshot["graphs"])
    print(f"fetch.py: {len(STAT_PANELS) + len(GRAPH_PANELS)} panels, {n} series, "
          f"step {step}s, $__rate_interval {variables['$__rate_interval']} -> {args.out}")
    if empty:
        print(f"fetch.py: panels with no data in the window: {', '.join(empty)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
