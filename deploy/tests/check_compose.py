#!/usr/bin/env python3
"""Structure of deploy/compose.yaml as `docker-compose config` resolved it (deploy/test.sh):
lowbit built from deploy/Dockerfile with the model volume read-only, a read-only root with a
/tmp tmpfs, a stop grace period longer than the shutdown timeout; Prometheus with
deploy/prometheus.yml; Grafana (profile) with the provisioning and the dashboard.

  check_compose.py RESOLVED.yaml
"""
import sys

import yaml

with open(sys.argv[1]) as f:
    c = yaml.safe_load(f)
errs = []
s = c["services"]
for name in ("lowbit", "prometheus", "grafana"):
    if name not in s:
        errs.append(f"no service {name}")
lb = s.get("lowbit", {})
if not str(lb.get("build", {}).get("dockerfile", "")).endswith("deploy/Dockerfile"):
    errs.append("lowbit must build deploy/Dockerfile")
vols = lb.get("volumes", [])
models = [v for v in vols if (v.get("target") if isinstance(v, dict) else v.split(":")[1]) == "/models"]
if not models or not (models[0].get("read_only") if isinstance(models[0], dict) else models[0].endswith(":ro")):
    errs.append(f"lowbit needs /models mounted read-only: {vols}")
if not lb.get("read_only") or "/tmp" not in lb.get("tmpfs", []):
    errs.append("lowbit runs with a read-only root and a /tmp tmpfs")
grace = lb.get("stop_grace_period", "10s")
secs = int(grace.rstrip("s")) if grace.endswith("s") and "m" not in grace else None
shutdown = float(lb.get("environment", {}).get("LOWBIT_SHUTDOWN_TIMEOUT", 30))
if secs is None or secs <= shutdown:
    errs.append(f"stop_grace_period {grace} must exceed LOWBIT_SHUTDOWN_TIMEOUT {shutdown}")
prom_vols = [v if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}" for v in s.get("prometheus", {}).get("volumes", [])]
if not any("prometheus.yml" in v and "/etc/prometheus/prometheus.yml" in v for v in prom_vols):
    errs.append(f"prometheus must mount deploy/prometheus.yml: {prom_vols}")
g = s.get("grafana", {})
if "grafana" not in g.get("profiles", []):
    errs.append("grafana is optional (profile grafana)")
gvols = " ".join(v if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}" for v in g.get("volumes", []))
for want in ("/etc/grafana/provisioning", "/var/lib/grafana/dashboards"):
    if want not in gvols:
        errs.append(f"grafana must mount {want}")
if errs:
    for e in errs:
        print(f"  FAIL {e}", file=sys.stderr)
    sys.exit(1)
print("  ok: lowbit (read-only /models, read-only root, grace > drain), prometheus, grafana (profile)")
