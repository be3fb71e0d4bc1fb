#!/usr/bin/env python3
"""Writes Courier's Grafana dashboards (the *.json files beside this script).

The panels are listed in `src/panels.json`; the dashboards are generated from
them so that every panel is built the same way: the `datasource` variable on
every panel and query, a unit, a description, and selectors on the `instance`
variable (itself narrowed by `tier`). Edit `src/panels.json` and run
`python3 dashboards/generate.py`; the test `tests/observability.rs` checks the
JSON and runs every query on a real Prometheus.

A panel marked `"quiet": true` shows something that is empty on a healthy system
(errors, dead letters); its description says so ("Empty on a healthy
system."), and the test then asks its queries to parse, not to return data.
"""

import json
import pathlib

RATE = "$__rate_interval"
SEL = 'instance=~"$instance"'


def load_panels(path):
    """The dashboards of `src/panels.json`: in each query, `{sel}` is the
    selector on the `instance` variable and `{rate}` the rate window."""
    spec = json.loads(path.read_text())
    dashboards = {}
    for uid, d in spec.items():
        panels = []
        for p in d["panels"]:
            queries = [
                {"expr": expr.replace("{sel}", SEL).replace("{rate}", RATE), "legend": legend}
                for expr, legend in p["queries"]
            ]
            panels.append({**p, "queries": queries, "quiet": p.get("quiet", False), "kind": "timeseries", "width": 12})
        dashboards[uid] = (d["title"], d["description"], panels)
    return dashboards


def variables():
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0},
        {"name": "tier", "label": "Tier", "type": "query", "datasource": datasource,
         "query": {"query": "label_values(courier_build_info, tier)", "refId": "tier"},
         "definition": "label_values(courier_build_info, tier)",
         "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "refresh": 2, "hide": 0},
        {"name": "instance", "label": "Instance", "type": "query", "datasource": datasource,
         "query": {"query": 'label_values(courier_build_info{tier=~"$tier"}, instance)', "refId": "instance"},
         "definition": 'label_values(courier_build_info{tier=~"$tier"}, instance)',
         "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "refresh": 2, "hide": 0},
    ]


def dashboard(uid, title, description, panels):
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    out = []
    for index, p in enumerate(panels):
        x = (index % 2) * 12
        y = (index // 2) * 8
        targets = [
            {"refId": chr(ord("A") + n), "datasource": datasource, "expr": t["expr"], "legendFormat": t["legend"]}
            for n, t in enumerate(p["queries"])
        ]
        out.append({
            "id": index + 1,
            "type": p["kind"],
            "title": p["title"],
            "description": p["description"] + (" Empty on a healthy system." if p["quiet"] else ""),
            "datasource": datasource,
            "gridPos": {"h": 8, "w": p["width"], "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": p["unit"]}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": targets,
        })
    return {
        "uid": f"courier-{uid}",
        "title": title,
        "description": description,
        "tags": ["courier"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": variables()},
        "annotations": {"list": []},
        "panels": out,
    }


def main():
    here = pathlib.Path(__file__).resolve().parent
    dashboards = load_panels(here / "src" / "panels.json")
    for uid, (title, description, panels) in dashboards.items():
        path = here / f"{uid}.json"
        path.write_text(json.dumps(dashboard(uid, title, description, panels), indent=2) + "\n")
    print("wrote", ", ".join(f"{uid}.json" for uid in dashboards))


if __name__ == "__main__":
    main()
