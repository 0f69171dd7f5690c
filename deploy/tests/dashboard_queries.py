#!/usr/bin/env python3
"""Runs every query of the Grafana dashboard, and the Helm chart's default KEDA query, against a
Prometheus that scrapes a live lowbit (deploy/test.sh).

  dashboard_queries.py PROMETHEUS_URL DASHBOARD.json [--keda-query Q] [--adapter-series-query Q]

Each dashboard query must be valid PromQL and return series (the metric names exist and carry
data); the KEDA query must be valid PromQL (its namespace/service labels only exist in
Kubernetes); the Prometheus adapter's seriesQuery (deploy/helm/prometheus-adapter-values.yaml),
less its namespace/pod matchers, must find its three lowbit: series.
"""
import argparse
import json
import sys
import urllib.parse
import urllib.request


def query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def exprs(dashboard):
    for p in dashboard["panels"]:
        for t in p.get("targets", []):
            yield p["title"], t["expr"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prometheus")
    ap.add_argument("dashboard")
    ap.add_argument("--keda-query")
    ap.add_argument("--adapter-series-query")
    a = ap.parse_args()
    with open(a.dashboard) as f:
        dash = json.load(f)
    bad = 0
    n = 0
    for title, expr in exprs(dash):
        e = expr.replace("$__rate_interval", "30s").replace("$instance", ".*")
        r = query(a.prometheus, e)
        n += 1
        if r.get("status") != "success":
            print(f"  FAIL {title}: {e}: {r.get('error')}", file=sys.stderr)
            bad += 1
        elif not r["data"]["result"]:
            print(f"  FAIL {title}: {e}: no series", file=sys.stderr)
            bad += 1
    if a.keda_query:
        r = query(a.prometheus, a.keda_query)
        if r.get("status") != "success":
            print(f"  FAIL KEDA query {a.keda_query}: {r.get('error')}", file=sys.stderr)
            bad += 1
    if a.adapter_series_query:
        q = a.adapter_series_query.replace(',namespace!="",pod!=""', "")
        r = query(a.prometheus, q)
        names = sorted({s["metric"]["__name__"] for s in r.get("data", {}).get("result", [])})
        if len(names) != 3:
            print(f"  FAIL adapter seriesQuery {q}: found {names}", file=sys.stderr)
            bad += 1
    if bad:
        sys.exit(1)
    print(f"  ok: {n} dashboard queries return series"
          + (", the KEDA query parses" if a.keda_query else "")
          + (", the adapter's seriesQuery finds its 3 series" if a.adapter_series_query else ""))


if __name__ == "__main__":
    main()
