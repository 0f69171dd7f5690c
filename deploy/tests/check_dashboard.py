#!/usr/bin/env python3
"""Structure of the Grafana dashboard and its provisioning files (deploy/test.sh; the queries
themselves run against a live Prometheus later, dashboard_queries.py).

  check_dashboard.py DASHBOARD.json PROVISIONING.yaml...
"""
import json
import sys

import yaml

dash = json.load(open(sys.argv[1]))
for p in sys.argv[2:]:
    doc = yaml.safe_load(open(p))
    assert doc.get("apiVersion") == 1 and ("datasources" in doc or "providers" in doc), p
errs = []
ids = [p["id"] for p in dash["panels"]]
if len(ids) != len(set(ids)):
    errs.append("panel ids are not unique")
exprs = []
for p in dash["panels"]:
    if not p.get("targets"):
        errs.append(f"panel {p['title']!r} has no query")
    for t in p.get("targets", []):
        if t.get("datasource", {}).get("uid") != "${datasource}":
            errs.append(f"panel {p['title']!r}: a query not on the $datasource variable")
        exprs.append(t["expr"])
text = "\n".join(exprs)
# What the issue asks the dashboard to show.
for need in ("lowbit:num_requests_running", "lowbit:num_requests_waiting", "lowbit:kv_cache_usage_perc",
             "rate(lowbit:generation_tokens_total", "lowbit:time_to_first_token_seconds_bucket",
             "lowbit:inter_token_latency_seconds_bucket"):
    if need not in text:
        errs.append(f"no query uses {need}")
for metric in ("time_to_first_token_seconds", "inter_token_latency_seconds"):
    qs = [e for e in exprs if f"lowbit:{metric}_bucket" in e and "histogram_quantile(" in e]
    if len(qs) < 3:
        errs.append(f"{metric}: expected p50/p90/p99 (histogram_quantile), got {len(qs)}")
if errs:
    for e in errs:
        print(f"  FAIL {e}", file=sys.stderr)
    sys.exit(1)
print(f"  ok: dashboard {dash['title']!r}: {len(dash['panels'])} panels, {len(exprs)} queries "
      "(run against Prometheus with the container below)")
