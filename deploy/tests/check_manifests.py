#!/usr/bin/env python3
"""Validates the manifests `helm template` rendered for one values file (deploy/test.sh).

  check_manifests.py RENDERED.yaml [--values VALUES.yaml] [--k8s 1.30.0 --k8s 1.37.0]
                     [--upstream-crds DIR]

- Kubernetes kinds: kubernetes-validate, strict (unknown fields are errors), against each
  --k8s version's schemas.
- Custom resources (ServiceMonitor, ScaledObject, InferencePool), which the Kubernetes schemas
  do not hold: deploy/tests/crd-schemas/*.json, hand-written schemas of the fields the chart
  writes (unknown fields are errors there too). With --upstream-crds DIR, also against the
  openAPIV3Schema of the CRD files in DIR (made strict: unknown fields are errors where the CRD
  does not preserve them).
- The chart's invariants: selectors match the pods, the security context, the probes, the grace
  period against the drain, the model mount, autoscaler targets.
- Expectations written at the top of the values file: `# expect-kinds: A, B` (kinds that must
  be rendered), `# expect-resource: nvidia.com/gpu` (a GPU resource in limits).
"""
import argparse
import glob
import json
import os
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
errors = []


def fail(msg):
    errors.append(msg)


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def local_crd_schemas():
    out = {}
    for path in glob.glob(os.path.join(HERE, "crd-schemas", "*.json")):
        with open(path) as f:
            s = json.load(f)
        api = s["properties"]["apiVersion"]["const"]
        kind = s["properties"]["kind"]["const"]
        out[(api, kind)] = (os.path.relpath(path, HERE), s)
    return out


def strictify(node):
    """An upstream structural schema with additionalProperties: false wherever it lists
    properties and neither preserves unknown fields nor allows extra ones (kubectl's strict
    field validation)."""
    if isinstance(node, dict):
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for v in node.values():
            strictify(v)
    elif isinstance(node, list):
        for v in node:
            strictify(v)
    return node


def upstream_crd_schemas(directory):
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for v in crd["spec"]["versions"]:
                    schema = strictify(v["schema"]["openAPIV3Schema"])
                    out[(f"{group}/{v['name']}", kind)] = (os.path.basename(path), schema)
    return out


def validate_schema(doc, label, schema):
    v = jsonschema.Draft7Validator(schema)
    for e in sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        path = "/".join(str(p) for p in e.absolute_path)
        fail(f"{name_of(doc)}: {label}: at '{path}': {e.message}")


def expectations(values_path):
    exp = {"kinds": [], "resource": None}
    if not values_path:
        return exp
    with open(values_path) as f:
        for line in f:
            if not line.startswith("#"):
                break
            key, _, val = line[1:].strip().partition(":")
            if key == "expect-kinds":
                exp["kinds"] = [k.strip() for k in val.split(",") if k.strip()]
            elif key == "expect-resource":
                exp["resource"] = val.strip()
    return exp


def subset(small, big):
    return all(big.get(k) == v for k, v in (small or {}).items())


def env_value(container, name):
    for e in container.get("env", []):
        if e["name"] == name:
            return e
    return None


def check_invariants(docs, exp):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    for k in exp["kinds"]:
        if k not in by_kind:
            fail(f"expected a {k}, none rendered (rendered: {sorted(by_kind)})")
    deps = by_kind.get("Deployment", [])
    if len(deps) != 1:
        fail(f"expected one Deployment, got {len(deps)}")
        return
    dep = deps[0]
    dname = dep["metadata"]["name"]
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    if not subset(dep["spec"]["selector"]["matchLabels"], pod_labels):
        fail("Deployment selector does not match its pod labels")
    spec = pod["spec"]
    psc = spec.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") in (None, 0):
        fail(f"pod securityContext must run as a non-root uid: {psc}")
    containers = {c["name"]: c for c in spec["containers"]}
    c = containers.get("lowbit")
    if c is None:
        fail("no container named lowbit")
        return
    for ctr in spec["containers"] + spec.get("initContainers", []):
        sc = ctr.get("securityContext", {})
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(f"container {ctr['name']}: readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"container {ctr['name']}: allowPrivilegeEscalation must be false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            fail(f"container {ctr['name']}: capabilities must drop ALL")
    probes = {p: c.get(p, {}).get("httpGet", {}).get("path")
              for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    if probes != {"startupProbe": "/ready", "livenessProbe": "/health", "readinessProbe": "/ready"}:
        fail(f"probes must be startup /ready, liveness /health, readiness /ready: {probes}")
    shutdown = float(env_value(c, "LOWBIT_SHUTDOWN_TIMEOUT")["value"])
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if not grace > shutdown + sleep:
        fail(f"terminationGracePeriodSeconds {grace} <= shutdown timeout {shutdown} + preStop {sleep}")
    args = c.get("args", [])
    if "--model" not in args or not args[args.index("--model") + 1].startswith("/models/"):
        fail(f"lowbit's args must hold --model /models/...: {args}")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    if not mounts.get("/models", {}).get("readOnly"):
        fail("/models must be mounted read-only in the lowbit container")
    if "/tmp" not in mounts:
        fail("/tmp must be a writable mount (the root filesystem is read-only)")
    if env_value(c, "LOWBIT_HOST")["value"] != "0.0.0.0":
        fail("LOWBIT_HOST must be 0.0.0.0")
    keys = env_value(c, "LOWBIT_API_KEYS")
    if keys is not None and "secretKeyRef" not in keys.get("valueFrom", {}):
        fail("LOWBIT_API_KEYS must come from a Secret")
    if exp["resource"]:
        lim = c.get("resources", {}).get("limits", {})
        req = c.get("resources", {}).get("requests", {})
        if exp["resource"] not in lim or lim.get(exp["resource"]) != req.get(exp["resource"]):
            fail(f"expected {exp['resource']} in limits (= requests): {c.get('resources')}")
    autoscaled = "HorizontalPodAutoscaler" in by_kind or "ScaledObject" in by_kind
    if autoscaled and "replicas" in dep["spec"]:
        fail("an autoscaled Deployment must leave replicas to the autoscaler")
    if "HorizontalPodAutoscaler" in by_kind and "ScaledObject" in by_kind:
        fail("both an HPA and a KEDA ScaledObject target the Deployment")
    for d in by_kind.get("HorizontalPodAutoscaler", []) + by_kind.get("ScaledObject", []):
        if d["spec"]["scaleTargetRef"]["name"] != dname:
            fail(f"{name_of(d)} does not target Deployment {dname}")
    svc_labels = {}
    for d in by_kind.get("Service", []):
        svc_labels = d["metadata"]["labels"]
        affinity = d["spec"].get("sessionAffinity")
        if affinity not in ("None", "ClientIP"):
            fail(f"{name_of(d)}: sessionAffinity {affinity!r}")
        timeout = d["spec"].get("sessionAffinityConfig", {}).get("clientIP", {}).get("timeoutSeconds")
        if (affinity == "ClientIP") != (timeout is not None):
            fail(f"{name_of(d)}: a ClientIP affinity needs its timeout, and only it")
        if not subset(d["spec"]["selector"], pod_labels):
            fail(f"{name_of(d)} selector does not match the pods")
    for d in by_kind.get("PodDisruptionBudget", []) + by_kind.get("InferencePool", []):
        if not subset(d["spec"]["selector"]["matchLabels"], pod_labels):
            fail(f"{name_of(d)} selector does not match the pods")
    for d in by_kind.get("InferencePool", []):
        if [p["number"] for p in d["spec"]["targetPorts"]] != [8000]:
            fail(f"{name_of(d)} targetPorts must be lowbit's port 8000")
    for d in by_kind.get("ServiceMonitor", []):
        if not subset(d["spec"]["selector"]["matchLabels"], svc_labels):
            fail(f"{name_of(d)} selector does not match the Service")
        if keys is not None and not all("authorization" in e for e in d["spec"]["endpoints"]):
            fail(f"{name_of(d)}: API keys are on, so /metrics needs the ServiceMonitor's authorization")
    svc = by_kind.get("Service", [{}])[0].get("spec", {}).get("selector", {})
    for d in by_kind.get("Pod", []):
        if svc and subset(svc, d["metadata"].get("labels", {})):
            fail(f"{name_of(d)} (a test pod) matches the Service's selector")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("--values")
    ap.add_argument("--k8s", action="append", default=[])
    ap.add_argument("--upstream-crds")
    a = ap.parse_args()
    versions = a.k8s or [kubernetes_validate.utils.latest_version()]
    with open(a.rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    crds = local_crd_schemas()
    upstream = upstream_crd_schemas(a.upstream_crds) if a.upstream_crds else {}
    counts = {}
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        counts[doc["kind"]] = counts.get(doc["kind"], 0) + 1
        if key in crds:
            label, schema = crds[key]
            validate_schema(doc, label, schema)
            if a.upstream_crds:
                if key not in upstream:
                    fail(f"{name_of(doc)}: no upstream CRD for {key} in {a.upstream_crds}")
                else:
                    validate_schema(doc, "upstream " + upstream[key][0], upstream[key][1])
            continue
        for v in versions:
            try:
                kubernetes_validate.validate(doc, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                fail(f"{name_of(doc)}: Kubernetes {v}: at '{path}': {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                fail(f"{name_of(doc)}: no schema for {key} (Kubernetes {v}, nor deploy/tests/crd-schemas)")
    check_invariants(docs, expectations(a.values))
    summary = ", ".join(f"{k} x{n}" if n > 1 else k for k, n in sorted(counts.items()))
    if errors:
        for e in errors:
            print(f"  FAIL {e}", file=sys.stderr)
        sys.exit(1)
    print(f"  ok: {summary}")


if __name__ == "__main__":
    main()
