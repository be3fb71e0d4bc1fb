#!/usr/bin/env python3
"""Writes Courier's Grafana dashboards (the *.json files beside this script).

The dashboards are generated so that every panel is built the same way: the
`datasource` variable on every panel and query, a unit, a description, and
selectors on the `instance` variable (itself narrowed by `tier`). Edit the
panel lists below and run `python3 dashboards/generate.py`; the test
`tests/observability.rs` checks the JSON and runs every query on a real
Prometheus.

A panel marked `quiet=True` shows something that is empty on a healthy system
(errors, dead letters); its description says so ("Empty on a healthy
system."), and the test then asks its queries to parse, not to return data.
"""

import json
import pathlib

RATE = "$__rate_interval"
SEL = 'instance=~"$instance"'


def q(expr, legend=""):
    return {"expr": expr, "legend": legend}


def panel(title, description, unit, queries, kind="timeseries", quiet=False, width=12):
    return {
        "title": title,
        "description": description,
        "unit": unit,
        "queries": queries,
        "kind": kind,
        "quiet": quiet,
        "width": width,
    }


def quantiles(metric, by=""):
    group = f"le{', ' + by if by else ''}"
    legend = f"{{{{{by}}}}} " if by else ""
    return [
        q(f"histogram_quantile(0.5, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))", f"{legend}p50"),
        q(f"histogram_quantile(0.99, sum by ({group}) (rate({metric}_bucket{{{SEL}}}[{RATE}])))", f"{legend}p99"),
    ]


DASHBOARDS = {
    "overview": (
        "Courier — overview",
        "The page on-call opens first: traffic in and out, delivery latency, connections, errors and backlog.",
        [
            panel("Messages admitted", "Messages accepted into the queue per second, by kind.", "ops",
                  [q(f"sum by (kind) (rate(courier_messages_admitted_total{{{SEL}}}[{RATE}]))", "{{kind}}")]),
            panel("Frames delivered", "Frames written to client sockets per second, by transport.", "ops",
                  [q(f"sum by (transport) (rate(courier_deliveries_total{{{SEL}}}[{RATE}]))", "{{transport}}")]),
            panel("Delivery latency", "From admission (the time in the queue record) to the socket write.", "s",
                  quantiles("courier_delivery_latency_seconds")),
            panel("Open connections", "Long connections held, by transport.", "short",
                  [q(f"sum by (transport) (courier_connections{{{SEL}}})", "{{transport}}")]),
            panel("Errors", "Errors per second by reason, client refusals included.", "ops",
                  [q(f"sum by (reason) (rate(courier_errors_total{{{SEL}}}[{RATE}]))", "{{reason}}")], quiet=True),
            panel("Consumer lag", "Records waiting for task, by topic.", "short",
                  [q(f"sum by (topic) (courier_consumer_lag{{{SEL}}})", "{{topic}}")]),
        ],
    ),
    "gateway": (
        "Courier — gateway",
        "Connect nodes: connections, rooms, deliveries, slow clients, gaps and presence.",
        [
            panel("Connections by node", "Long connections per connect node and transport.", "short",
                  [q(f"sum by (instance, transport) (courier_connections{{{SEL}}})", "{{instance}} {{transport}}")]),
            panel("Rooms with local members", "Rooms with at least one connection on each node.", "short",
                  [q(f"sum by (instance) (courier_rooms{{{SEL}}})", "{{instance}}")]),
            panel("Deliveries by node", "Frames written to sockets per second, per node.", "ops",
                  [q(f"sum by (instance) (rate(courier_deliveries_total{{{SEL}}}[{RATE}]))", "{{instance}}")]),
            panel("Pushed frames", "Frames pushed to connect per second: matched a local connection, or not (routing waste).", "ops",
                  [q(f"sum by (result) (rate(courier_pushed_frames_total{{{SEL}}}[{RATE}]))", "{{result}}")]),
            panel("Slow-consumer closes", "Connections closed per second because their outbound queue overflowed.", "ops",
                  [q(f"sum by (instance) (rate(courier_slow_consumer_closes_total{{{SEL}}}[{RATE}]))", "{{instance}}")]),
            panel("Gaps filled from history", "Pushes that arrived with a hole in a stream and were filled from history.", "ops",
                  [q(f'sum by (reason) (rate(courier_errors_total{{{SEL}, reason=~"push_gap.*|gap_fill_failed"}}[{RATE}]))', "{{reason}}")],
                  quiet=True),
            panel("Connect nodes reaped", "Connect nodes whose presence lease lapsed (crashed without a goodbye).", "short",
                  [q(f'sum(increase(courier_errors_total{{{SEL}, reason="node_lease_lapsed"}}[1h]))', "reaped in the last hour")],
                  quiet=True),
        ],
    ),
    "pipeline": (
        "Courier — pipeline",
        "From admission to push: the queue, task's persisting, and pushes to connect nodes.",
        [
            panel("Admission", "Messages accepted into the queue per second, by kind.", "ops",
                  [q(f"sum by (kind) (rate(courier_messages_admitted_total{{{SEL}}}[{RATE}]))", "{{kind}}")]),
            panel("Produce latency", "Time for the queue to acknowledge a message (all its records).", "s",
                  quantiles("courier_produce_duration_seconds")),
            panel("Lag per partition", "Records of each partition not yet handed to task.", "short",
                  [q(f"max by (topic, partition) (courier_consumer_lag{{{SEL}}})", "{{topic}} #{{partition}}")]),
            panel("Records consumed", "Queue records consumed by task per second, by topic.", "ops",
                  [q(f"sum by (topic) (rate(courier_records_consumed_total{{{SEL}}}[{RATE}]))", "{{topic}}")]),
            panel("Persist latency", "Time to persist one batch of records into history.", "s",
                  quantiles("courier_history_write_duration_seconds")),
            panel("Batch size", "Records per history transaction.", "short",
                  quantiles("courier_history_batch_size")),
            panel("Pushes", "Push calls to connect nodes per second, by result.", "ops",
                  [q(f"sum by (result) (rate(courier_pushes_total{{{SEL}}}[{RATE}]))", "{{result}}")]),
            panel("Push queue depth", "Items waiting in each connect node's push queue.", "short",
                  [q(f"max by (node) (courier_push_queue_depth{{{SEL}}})", "{{node}}")]),
            panel("Push failures", "Push requests that failed after every retry, per connect node.", "ops",
                  [q(f"sum by (node) (rate(courier_push_failures_total{{{SEL}}}[{RATE}]))", "{{node}}")]),
            panel("Dead letters", "Records set aside because they could not become history.", "short",
                  [q(f'sum(increase(courier_errors_total{{{SEL}, reason="dead_letter"}}[1h]))', "in the last hour")],
                  quiet=True),
        ],
    ),
    "api-logic": (
        "Courier — API and logic",
        "The HTTP API and logic's gRPC service: rates, answer codes, durations, logins and refusals.",
        [
            panel("HTTP requests", "HTTP API requests per second by route and answer code.", "reqps",
                  [q(f"sum by (route, code) (rate(courier_http_requests_total{{{SEL}}}[{RATE}]))", "{{route}} {{code}}")]),
            panel("HTTP duration", "HTTP API request duration by route.", "s",
                  quantiles("courier_http_request_duration_seconds", "route")),
            panel("gRPC requests", "Logic's gRPC calls per second by method and status code.", "reqps",
                  [q(f"sum by (method, code) (rate(courier_grpc_requests_total{{{SEL}}}[{RATE}]))", "{{method}} {{code}}")]),
            panel("gRPC duration", "Logic's gRPC call duration by method.", "s",
                  quantiles("courier_grpc_request_duration_seconds", "method")),
            panel("Logins", "Login requests per second by answer code.", "reqps",
                  [q(f'sum by (code) (rate(courier_http_requests_total{{{SEL}, route="/user/login"}}[{RATE}]))', "{{code}}")]),
            panel("Rate-limit refusals", "Requests, logins and sends refused for going over a limit.", "ops",
                  [q(f'sum by (reason) (rate(courier_errors_total{{{SEL}, reason=~".*_rate_limited"}}[{RATE}]))', "{{reason}}")],
                  quiet=True),
        ],
    ),
}


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
    for uid, (title, description, panels) in DASHBOARDS.items():
        path = here / f"{uid}.json"
        path.write_text(json.dumps(dashboard(uid, title, description, panels), indent=2) + "\n")
    print("wrote", ", ".join(f"{uid}.json" for uid in DASHBOARDS))


if __name__ == "__main__":
    main()
