#!/usr/bin/env python3
"""Checks what can be checked of the packaging without a cluster or a Docker engine.

- the Helm chart lints clean and renders with default values and with every option on
  (ci/all-on-values.yaml), through Helm's own library (helm-python-sdk);
- every rendered manifest validates against the Kubernetes schemas (kubernetes-validate);
- values.schema.json rejects a bad values file;
- the config the chart renders passes `graph-cdc validate`;
- docker-compose.yml validates against the Compose specification's schema and names only
  images that exist publicly (apache/kafka) or are built from this repository;
- the Dockerfile's build stage runs the release build the project uses.

Usage: check_packaging.py GRAPH_CDC_BINARY COMPOSE_SPEC_JSON
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "charts", "graph-cdc")
K8S_VERSION = "1.33.0"
checks = 0


def ok(what):
    global checks
    checks += 1
    print(f"ok: {what}")


def fail(what):
    print(f"FAILED: {what}", file=sys.stderr)
    sys.exit(1)


def check_chart(binary):
    all_on = yaml.safe_load(open(os.path.join(CHART, "ci", "all-on-values.yaml")))
    for label, values in [("default values", None), ("all options on", all_on)]:
        report = helm.lint(CHART, values, strict=True, kube_version="v" + K8S_VERSION)
        errors = report["errors"] + [m["error"] for m in report["messages"] if m["severity"] >= 2]
        if errors:
            fail(f"helm lint ({label}): {errors}")
        ok(f"helm lint --strict ({label})")
        chart = helm.Chart.load(CHART)
        rendered = chart.render(values, name="graph-cdc", namespace="cdc", is_install=True)
        kinds = []
        for path, text in sorted(rendered.items()):
            if path.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if not doc:
                    continue
                kinds.append(doc["kind"])
                if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                    # A CRD: not in the Kubernetes schemas; check its shape by hand.
                    if not doc["spec"]["endpoints"][0]["path"] == "/metrics":
                        fail("ServiceMonitor does not scrape /metrics")
                    continue
                try:
                    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
                except kubernetes_validate.ValidationError as e:
                    fail(f"{path} ({label}): {e.message}")
                if doc["kind"] == "StatefulSet":
                    spec = doc["spec"]["template"]["spec"]
                    c = spec["containers"][0]
                    sc = c["securityContext"]
                    if not (spec["securityContext"]["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
                            and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]):
                        fail("the pod is not restricted")
                    if c["livenessProbe"]["httpGet"]["path"] != "/healthz" or c["readinessProbe"]["httpGet"]["path"] != "/readyz":
                        fail("probes are not /healthz and /readyz")
                    if "checksum/config" not in doc["spec"]["template"]["metadata"]["annotations"]:
                        fail("no checksum annotation")
                if doc["kind"] == "ConfigMap":
                    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
                        f.write(doc["data"]["graph-cdc.toml"])
                    env = dict(os.environ, GRAPH_CDC__GRAPH__CLIENT_SECRET="x")
                    r = subprocess.run([binary, "validate", "--config", f.name], env=env,
                                       capture_output=True, text=True)
                    os.unlink(f.name)
                    if r.returncode != 0:
                        fail(f"graph-cdc validate on the rendered config ({label}): {r.stderr}")
                    ok(f"graph-cdc validate accepts the rendered config ({label})")
        expected = {"ConfigMap", "Secret", "Service", "ServiceAccount", "StatefulSet", "Pod"}
        if values:
            expected |= {"ServiceMonitor", "PodDisruptionBudget"}
        if not expected <= set(kinds):
            fail(f"missing kinds ({label}): {expected - set(kinds)}")
        ok(f"rendered {len(kinds)} manifests valid for Kubernetes {K8S_VERSION} ({label})")
    chart = helm.Chart.load(CHART)
    for bad in [{"replicaCount": "two"}, {"service": {"port": "http"}}, {"imagePullPolicy": "Always"}]:
        try:
            chart.validate_schema(bad)
        except helm.HelmError:
            continue
        fail(f"values.schema.json accepted {bad}")
    ok("values.schema.json rejects bad values")
    meta = yaml.safe_load(open(os.path.join(CHART, "Chart.yaml")))
    cargo = open(os.path.join(ROOT, "Cargo.toml")).read()
    version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    if meta["apiVersion"] != "v2" or meta["appVersion"] != version:
        fail(f"Chart.yaml: apiVersion v2 and appVersion {version} expected")
    ok("Chart.yaml appVersion equals the crate version")


def check_compose(spec_path):
    spec = json.load(open(spec_path))
    compose = yaml.safe_load(open(os.path.join(ROOT, "docker-compose.yml")))
    try:
        jsonschema.validate(compose, spec)
    except jsonschema.ValidationError as e:
        fail(f"docker-compose.yml: {e.message}")
    for name, svc in compose["services"].items():
        image = svc.get("image", "")
        if "build" in svc:
            continue
        if not image.startswith("apache/kafka:"):
            fail(f"service {name} uses image {image}, neither apache/kafka nor built here")
    ok("docker-compose.yml matches the Compose specification; images are apache/kafka or built here")


def check_dockerfile():
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    build = next((st for st in text.split("\nFROM ") if " AS build" in st.split("\n")[0]), "")
    if "cargo build --release --locked --bin graph-cdc" not in build:
        fail("the Dockerfile's build stage does not run the release build")
    if "USER 10001" not in text or "EXPOSE 8083" not in text or 'ENTRYPOINT ["graph-cdc"]' not in text:
        fail("the runtime stage must be non-root, expose 8083 and run graph-cdc")
    if re.search(r"(?i)(secret|password|token)\s*=", text):
        fail("the Dockerfile looks like it bakes in a secret")
    ok("Dockerfile: release build, non-root runtime, no secrets")


if __name__ == "__main__":
    check_chart(sys.argv[1])
    check_compose(sys.argv[2])
    check_dockerfile()
    print(f"{checks} passed, 0 failed")
