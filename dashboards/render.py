#!/usr/bin/env python3
"""Draws what each dashboard shows, from a real Prometheus, as a PNG.

Grafana does not run everywhere Courier is developed; this script runs every
panel's queries over a time range on a Prometheus (the HTTP API's
query_range, variables set to "all") and plots them in the dashboard's
layout, so a reader sees what the dashboards show without Grafana.

    python3 dashboards/render.py --prometheus http://localhost:9090 \\
        --minutes 10 --out docs/dashboards

Needs matplotlib (`pip install matplotlib`).
"""

import argparse
import json
import pathlib
import time
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

UNITS = {"s": "seconds", "ops": "per second", "reqps": "requests/s", "short": ""}


def as_sent(expr, step):
    rate = f"{max(4 * step, 30)}s"
    return expr.replace("$__rate_interval", rate).replace("$instance", ".*").replace("$tier", ".*")


def query_range(prometheus, expr, start, end, step):
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as response:
        answer = json.load(response)
    if answer.get("status") != "success":
        raise RuntimeError(f"{expr}: {answer.get('error')}")
    return answer["data"]["result"]


def legend(template, labels):
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text or ",".join(f"{k}={v}" for k, v in labels.items())


def render(path, prometheus, minutes, out):
    dashboard = json.loads(path.read_text())
    panels = dashboard["panels"]
    rows = (len(panels) + 1) // 2
    figure, axes = plt.subplots(rows, 2, figsize=(14, 3.2 * rows), squeeze=False)
    end = time.time()
    start = end - 60 * minutes
    step = max(int(60 * minutes / 240), 1)
    for index, panel in enumerate(panels):
        ax = axes[index // 2][index % 2]
        unit = panel["fieldConfig"]["defaults"]["unit"]
        ax.set_title(panel["title"], fontsize=10, loc="left")
        ax.set_ylabel(UNITS.get(unit, unit), fontsize=8)
        ax.tick_params(labelsize=7)
        drawn = 0
        for target in panel["targets"]:
            for series in query_range(prometheus, as_sent(target["expr"], step), start, end, step):
                xs = [(float(t) - end) / 60 for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, linewidth=1.2, label=legend(target.get("legendFormat", ""), series["metric"]))
                drawn += 1
        if drawn:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data (empty on a healthy system)", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8, color="gray")
        ax.set_xlabel("minutes ago", fontsize=7)
        ax.grid(alpha=0.3)
    for index in range(len(panels), rows * 2):
        axes[index // 2][index % 2].axis("off")
    figure.suptitle(dashboard["title"], fontsize=13, x=0.01, ha="left")
    figure.tight_layout()
    target = out / f"{path.stem}.png"
    figure.savefig(target, dpi=80)
    plt.close(figure)
    print("wrote", target)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://localhost:9090")
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--out", default="docs/dashboards")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(pathlib.Path(__file__).resolve().parent.glob("*.json")):
        render(path, args.prometheus.rstrip("/"), args.minutes, out)


if __name__ == "__main__":
    main()
