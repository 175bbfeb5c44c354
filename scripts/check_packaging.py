#!/usr/bin/env python3
"""Checks what can be checked of the packaging without a cluster or a Docker engine.

- the Helm chart lints clean and renders, through Helm's own library (helm-python-sdk), with
  default values plus a client secret and a REST token, with server.allowUnauthenticated,
  with an existing Secret with and without its auth-token key, with credential files of the
  user's own (extraVolumes), with every option on (ci/all-on-values.yaml), and with each way
  of reaching a secured Kafka: mutual TLS with Strimzi's Secrets, SASL_SSL + SCRAM-SHA-512
  with a CA given as a value, OAUTHBEARER/OIDC with an existing Secret, Confluent Cloud's
  SASL_SSL + PLAIN; without a token (and without allowUnauthenticated) it refuses to render,
  saying how to give one;
- every rendered manifest, the NetworkPolicy included, validates against the Kubernetes
  schemas (kubernetes-validate); the NetworkPolicy admits exactly the configured peers to
  port http and allows exactly the configured egress (Kafka, HTTPS, DNS by default); the
  probes fit a cheap /readyz; helm test's pod is a client the policy admits and checks the
  token is required;
- the Secret, volume, mount and environment wiring is right: each render is "run" as the
  kubelet would: the Secrets (rendered, or stand-ins for existing ones) are resolved into
  the container's environment and into the files of its Secret volumes, written to a
  temporary directory (kafka.tls.mountPath and secrets.mountPath point there), with a real
  CA, client certificate and key made with the `openssl` CLI; a key the pod needs but its
  Secret lacks keeps it from starting; the Graph secret and the REST token are read-only
  0440 files the config names (client_secret_file, auth_token_file), never environment
  variables; the config the chart renders then passes `graph-cdc validate` with exactly that
  environment and those files, and must fail when the CA file is garbage (validate builds
  the librdkafka clients, which load the files);
- no secret value reaches the ConfigMap or any other manifest but a Secret;
- values.schema.json refuses bad values, and the templates refuse contradictory ones and
  secrets in `config`;
- docker-compose.yml validates against the Compose specification's schema, names only
  images that exist publicly (apache/kafka) or are built from this repository, publishes
  ports on 127.0.0.1 only, and runs graph-cdc with a token: its config and environment
  pass `graph-cdc validate`;
- the Dockerfile parses (instructions, stages) and its build stage runs the release build
  the project uses with what librdkafka's TLS and OIDC build needs; its runtime has libssl3
  and CAs.

Usage: check_packaging.py GRAPH_CDC_BINARY COMPOSE_SPEC_JSON
"""
import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "charts", "graph-cdc")
K8S_VERSION = "1.33.0"
RELEASE = "graph-cdc"
FULLNAME = "graph-cdc"  # release "graph-cdc" contains the chart name
checks = 0


def ok(what):
    global checks
    checks += 1
    print(f"ok: {what}")


def fail(what):
    print(f"FAILED: {what}", file=sys.stderr)
    sys.exit(1)


def merge(base, over):
    """Helm's values merge: maps deeply, everything else replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


# ---------------------------------------------------------------------------------------
# Certificates

def openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"openssl {' '.join(args)}: {r.stderr}")
    return r.stdout


def make_pki(d):
    """A CA (the brokers' CA), a client certificate and key it signed, a second CA (Strimzi's
    clients CA, which must not be the one trusted) and an RSA pair for Graph credentials."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=graph-cdc check cluster CA", cwd=d)
    openssl("req", "-x509", *ec, "-keyout", "clients-ca.key", "-out", "clients-ca.crt", "-days", "2",
            "-subj", "/CN=graph-cdc check clients CA", cwd=d)
    openssl("req", *ec, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=graph-cdc", cwd=d)
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "2",
            "-days", "2", "-out", "client.crt", cwd=d)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "graph.key", "-out", "graph.crt",
            "-days", "2", "-subj", "/CN=graph-cdc app", cwd=d)
    pki = {n: open(os.path.join(d, n)).read()
           for n in ["ca.crt", "clients-ca.crt", "client.crt", "client.key", "graph.crt", "graph.key"]}
    for n, marker in [("ca.crt", "CERTIFICATE"), ("client.crt", "CERTIFICATE"), ("client.key", "PRIVATE KEY")]:
        if f"-----BEGIN {marker}-----" not in pki[n]:
            fail(f"openssl made no PEM {marker} in {n}")
    return pki


def check_tls_files(d, want_ca, want_cert):
    """The files the pod would see: PEM that parses, a key matching its certificate, a
    certificate signed by the CA."""
    ca, crt, key = (os.path.join(d, n) for n in ("ca.crt", "tls.crt", "tls.key"))
    if want_ca:
        openssl("x509", "-noout", "-in", ca, cwd=d)
    if want_cert:
        cert_pub = openssl("x509", "-noout", "-pubkey", "-in", crt, cwd=d)
        key_pub = openssl("pkey", "-pubout", "-in", key, cwd=d)
        if cert_pub != key_pub:
            fail(f"{key} is not the key of {crt}")
        if want_ca:
            openssl("verify", "-CAfile", ca, crt, cwd=d)


# ---------------------------------------------------------------------------------------
# The kubelet's part: Secrets into environment variables and files

def secret_data(doc):
    data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
    data.update(doc.get("stringData") or {})
    return data


class PodWouldNotStart(Exception):
    """What the kubelet would refuse: a Secret or a key the pod needs is missing."""


def materialise(sts, secrets, root):
    """The container's environment and Secret-volume files, as the kubelet would make them.
    Mount paths inside `root` are written in place; others under root/sandbox, and
    environment values naming them are rewritten. Returns (env, args, config mount).
    Raises PodWouldNotStart where the kubelet would keep the pod from starting."""
    spec = sts["spec"]["template"]["spec"]
    c = spec["containers"][0]
    volumes = {v["name"]: v for v in spec["volumes"]}
    moved = {}
    config_mount = None
    for m in c["volumeMounts"]:
        v = volumes.get(m["name"])
        if v is None:
            fail(f"volumeMount {m['name']} has no volume")
        if "configMap" in v and m["name"] == "config":
            config_mount = (m, v)
            continue
        if "secret" not in v and "projected" not in v:
            continue  # emptyDir, or an extra volume of another kind: nothing to resolve
        if not m.get("readOnly"):
            fail(f"volume {m['name']} holding secrets is not mounted readOnly")
        path = m["mountPath"]
        target = path if path.startswith(root + os.sep) else os.path.join(root, "sandbox", path.lstrip("/"))
        moved[path] = target
        os.makedirs(target, exist_ok=True)
        sources = [s["secret"] for s in v["projected"]["sources"]] if "projected" in v else \
            [dict(v["secret"], name=v["secret"]["secretName"])]
        for src in sources:
            if src["name"] not in secrets and not src.get("optional"):
                raise PodWouldNotStart(f"volume {m['name']}: Secret {src['name']} does not exist")
            data = secrets.get(src["name"], {})
            for item in src.get("items") or [{"key": k, "path": k} for k in data]:
                if item["key"] not in data:
                    if src.get("optional"):
                        continue
                    raise PodWouldNotStart(f"volume {m['name']}: Secret {src['name']} has no key {item['key']}")
                with open(os.path.join(target, item["path"]), "w") as f:
                    f.write(data[item["key"]])
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            val = e["value"]
            for path, target in moved.items():
                if val == path or val.startswith(path + "/"):
                    val = target + val[len(path):]
            env[e["name"]] = val
            continue
        ref = e["valueFrom"]
        if "fieldRef" in ref:
            if ref["fieldRef"]["fieldPath"] != "metadata.name":
                fail(f"env {e['name']}: unexpected fieldRef {ref['fieldRef']}")
            env[e["name"]] = f"{sts['metadata']['name']}-0"
        elif "secretKeyRef" in ref:
            r = ref["secretKeyRef"]
            if r["key"] in secrets.get(r["name"], {}):
                env[e["name"]] = secrets[r["name"]][r["key"]]
            elif not r.get("optional"):
                raise PodWouldNotStart(f"env {e['name']}: Secret {r['name']} has no key {r['key']}")
        else:
            fail(f"env {e['name']}: unexpected valueFrom {ref}")
    return env, c["args"], config_mount


def run_validate(binary, toml_text, env, root):
    path = os.path.join(root, "graph-cdc.toml")
    with open(path, "w") as f:
        f.write(toml_text)
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return subprocess.run([binary, "validate", "--config", path], env={**base, **env},
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------------------
# The chart

def render_checked(label, values):
    report = helm.lint(CHART, values, strict=True, kube_version="v" + K8S_VERSION)
    errors = report["errors"] + [m["error"] for m in report["messages"] if m["severity"] >= 2]
    if errors:
        fail(f"helm lint ({label}): {errors}")
    rendered = helm.Chart.load(CHART).render(values, name=RELEASE, namespace="cdc", is_install=True)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            docs.append(doc)
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                # A CRD: not in the Kubernetes schemas; check its shape by hand.
                if not doc["spec"]["endpoints"][0]["path"] == "/metrics":
                    fail("ServiceMonitor does not scrape /metrics")
                continue
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{path} ({label}): {e.message}")
    return docs


def with_root(values, root):
    """`@ROOT@` in any string of the values becomes the temporary directory."""
    if isinstance(values, dict):
        return {k: with_root(v, root) for k, v in values.items()}
    if isinstance(values, list):
        return [with_root(v, root) for v in values]
    return values.replace("@ROOT@", root) if isinstance(values, str) else values


def effective_values(values):
    return merge(yaml.safe_load(open(os.path.join(CHART, "values.yaml"))), values)


def check_network_policy(np, sts, values, label):
    """Ingress only to the named port http, only from the other workers and the labelled
    peers; egress exactly the Kafka, Graph (HTTPS) and DNS rules of the values, the other
    workers' port http, plus `extra`."""
    v = effective_values(values)["networkPolicy"]
    spec = np["spec"]
    if spec["podSelector"] != sts["spec"]["selector"]:
        fail(f"NetworkPolicy selects {spec['podSelector']}, not the worker pods ({label})")
    if sorted(spec.get("policyTypes", [])) != ["Egress", "Ingress"]:
        fail(f"NetworkPolicy policyTypes {spec.get('policyTypes')} ({label})")
    ports = {p["name"]: p["containerPort"] for p in sts["spec"]["template"]["spec"]["containers"][0]["ports"]}
    if ports.get("http") != effective_values(values)["service"]["port"]:
        fail(f"the container port named http is not service.port ({label})")
    # The other workers first: they gather each other's status over the REST API.
    peers = {"podSelector": sts["spec"]["selector"]}
    want_from = [peers]
    if v["ingress"].get("clientPodLabels"):
        want_from.append({"podSelector": {"matchLabels": v["ingress"]["clientPodLabels"]}})
    prom = v["ingress"].get("prometheus") or {}
    if prom.get("namespaceLabels"):
        want_from.append({"namespaceSelector": {"matchLabels": prom["namespaceLabels"]},
                          "podSelector": {"matchLabels": prom.get("podLabels") or {}}})
    want_from += v["ingress"].get("extraFrom") or []
    want_ingress = [{"ports": [{"port": "http", "protocol": "TCP"}], "from": want_from}] if want_from else []
    if spec.get("ingress") != want_ingress:
        fail(f"NetworkPolicy ingress is {spec.get('ingress')}, not {want_ingress} ({label})")
    for rule in spec["ingress"]:
        if not rule.get("from") or {} in rule["from"]:
            fail(f"NetworkPolicy ingress rule open to every source ({label}): {rule}")
    want_egress = []
    for name in ("kafka", "graph", "dns"):
        r = v["egress"][name]
        rule = {"ports": [dict(p, protocol=p.get("protocol", "TCP")) for p in r["ports"]]}
        if r.get("to"):
            rule["to"] = r["to"]
        want_egress.append(rule)
    want_egress.append({"ports": [{"port": "http", "protocol": "TCP"}], "to": [peers]})
    want_egress += v["egress"].get("extra") or []
    if spec.get("egress") != want_egress:
        fail(f"NetworkPolicy egress is {spec.get('egress')}, not {want_egress} ({label})")
    got = {(p.get("protocol"), p["port"], p.get("endPort")) for r in spec["egress"] for p in r.get("ports", [])}
    if not values.get("networkPolicy", {}).get("egress") and \
            not {("TCP", 9092, 9096), ("TCP", 443, None), ("UDP", 53, None), ("TCP", 53, None)} <= got:
        fail(f"default egress is not Kafka 9092-9096, HTTPS 443 and DNS 53 UDP/TCP ({label}): {got}")
    ok(f"NetworkPolicy: ingress to port http only from the workers and {len(want_from) - 1} labelled peer(s), "
       f"egress Kafka/Graph/DNS/workers{' + extra' if v['egress'].get('extra') else ''} ({label})")


def check_test_pod(by_kind, values, expect, label):
    """`helm test`'s pod: a client the NetworkPolicy lets in; with a token, it proves the API
    refuses a call without it (401) and answers one with it, reading the mounted key."""
    v = effective_values(values)
    pods = [p for p in by_kind.get("Pod", []) if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    if len(pods) != 1:
        fail(f"one helm test pod expected ({label})")
    pod = pods[0]
    if v["networkPolicy"]["enabled"]:
        labels = pod["metadata"].get("labels", {})
        for k, val in (v["networkPolicy"]["ingress"].get("clientPodLabels") or {}).items():
            if labels.get(k) != val:
                fail(f"the helm test pod lacks the client label {k}={val} the NetworkPolicy admits ({label})")
    c = pod["spec"]["containers"][0]
    script = " ".join(c["command"])
    if expect.get("token") is not None:
        vol = {x["name"]: x for x in pod["spec"].get("volumes", [])}.get("token", {}).get("secret", {})
        if vol.get("secretName") != (values.get("secrets", {}).get("existingSecret") or FULLNAME) \
                or [i["key"] for i in vol.get("items", [])] != ["auth-token"]:
            fail(f"the helm test pod does not mount the auth-token key ({label}): {vol}")
        if "' 401 '" not in script or "Authorization: Bearer $(cat /var/run/graph-cdc/auth-token)" not in script:
            fail(f"the helm test pod does not check the token is required and accepted ({label}): {script}")
    elif "Authorization" in script:
        fail(f"the helm test pod sends a token the chart does not have ({label})")
    ok(f"helm test pod: {'admitted by the NetworkPolicy; ' if v['networkPolicy']['enabled'] else ''}{'checks 401 without the token, 200 with it' if expect.get('token') is not None else 'GETs /readyz'} ({label})")


def check_release(binary, label, values, pki, existing=None, expect=None, extra_kinds=(),
                  negative=False, wont_start=None):
    """Lint, render, validate the manifests, then run the pod's config through `graph-cdc
    validate` with the environment and files the kubelet would give it. `expect["token"]` and
    `expect["client_secret"]`: what the files the config names must hold (None: no such
    file from the chart); `wont_start`: the pod must not start, the kubelet's reason
    containing it."""
    expect = expect or {}
    existing = existing or {}
    root = tempfile.mkdtemp(prefix="graph-cdc-chart-")
    try:
        tls_dir = os.path.join(root, "kafka-tls")
        cred_dir = os.path.join(root, "credentials")
        expect = with_root(expect, root)
        values = merge(with_root(values or {}, root),
                       {"kafka": {"tls": {"mountPath": tls_dir}}, "secrets": {"mountPath": cred_dir}})
        docs = render_checked(label, values)
        by_kind = {}
        for d in docs:
            by_kind.setdefault(d["kind"], []).append(d)
        np_on = values.get("networkPolicy", {}).get("enabled", True)
        want = {"ConfigMap", "Service", "ServiceAccount", "StatefulSet", "Pod", *extra_kinds}
        if np_on:
            want.add("NetworkPolicy")
        elif "NetworkPolicy" in by_kind:
            fail(f"a NetworkPolicy though networkPolicy.enabled is false ({label})")
        if not values.get("secrets", {}).get("existingSecret") or expect.get("tls_secret_created"):
            want.add("Secret")
        if not want <= set(by_kind):
            fail(f"missing kinds ({label}): {want - set(by_kind)}")
        for ing in by_kind.get("Ingress", []):
            # Graph's posts only: /notifications (and /notifications/lifecycle) on its host.
            rules = ing["spec"]["rules"]
            paths = [p["path"] for r in rules for p in r["http"]["paths"]]
            port = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["number"]
            if paths != ["/notifications"] or port != values.get("service", {}).get("port", 8083):
                fail(f"the notifications Ingress routes {paths} to port {port} ({label})")
            ok(f"the notifications Ingress routes /notifications only, on {rules[0]['host']} ({label})")
        sts = by_kind["StatefulSet"][0]
        tmpl = sts["spec"]["template"]
        spec = tmpl["spec"]
        c = spec["containers"][0]
        sc = c["securityContext"]
        if not (spec["securityContext"]["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
                and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]):
            fail(f"the pod is not restricted ({label})")
        live, ready = c["livenessProbe"], c["readinessProbe"]
        if live["httpGet"]["path"] != "/healthz" or ready["httpGet"]["path"] != "/readyz":
            fail("probes are not /healthz and /readyz")
        # /readyz reads a background check: a few seconds' timeout, a few misses, not 1 s/1.
        for name, p in (("liveness", live), ("readiness", ready)):
            if not (p.get("periodSeconds") == 10 and 2 <= p.get("timeoutSeconds", 1) < 10
                    and p.get("failureThreshold", 3) >= 3):
                fail(f"{name} probe: period 10 s, timeout 2-9 s, failureThreshold >= 3 expected ({label}): {p}")
        for a in ("checksum/config", "checksum/secret", "checksum/kafka-tls"):
            if a not in tmpl["metadata"]["annotations"]:
                fail(f"no {a} annotation ({label})")
        ok(f"{len(docs)} manifests lint clean and are valid for Kubernetes {K8S_VERSION} ({label})")

        cm = by_kind["ConfigMap"][0]
        toml_text = cm["data"]["graph-cdc.toml"]
        cfg = tomllib.loads(toml_text)

        # Secrets: rendered ones, plus stand-ins for the existing ones the values name.
        secrets = {d["metadata"]["name"]: secret_data(d) for d in by_kind.get("Secret", [])}
        for name in existing:
            if name in secrets:
                fail(f"the chart created Secret {name}, which the values say exists ({label})")
        secrets.update(existing)

        # No secret value outside a Secret.
        s = values.get("secrets", {})
        t = values.get("kafka", {}).get("tls", {})
        secret_values = [v for k, v in s.items() if k not in ("existingSecret", "mountPath", "certificate") and v]
        secret_values += [t[k] for k in ("key",) if t.get(k)]
        for data in existing.values():
            secret_values += [v for k, v in data.items() if not k.endswith(".crt")]
        certs = [t[k] for k in ("ca", "cert") if t.get(k)] + [s[k] for k in ("certificate",) if s.get(k)]
        outside = yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"])
        for v in secret_values + certs:
            needle = v.strip().splitlines()[1] if v.startswith("-----") else v
            if needle in outside or needle in toml_text:
                fail(f"a secret value ({needle[:12]}…) is in a manifest that is not a Secret ({label})")
        ok(f"no secret value in the ConfigMap or any manifest but a Secret ({label})")

        # Kafka secrets reach the pod only through secretKeyRef; nothing else is taken from a
        # Secret into the environment (the Graph secret and the REST token are files).
        env_by_name = {e["name"]: e for e in c.get("env", [])}
        kafka_env = {"GRAPH_CDC__KAFKA__OPTIONS__SASL_PASSWORD", "GRAPH_CDC__KAFKA__OPTIONS__SASL_OAUTHBEARER_CLIENT_SECRET"}
        for e in c.get("env", []):
            if "secretKeyRef" in e.get("valueFrom", {}) and e["name"] not in kafka_env:
                fail(f"env {e['name']} comes from a Secret; only the Kafka secrets may ({label})")
            if e["name"].startswith(("GRAPH_CDC__GRAPH__", "GRAPH_CDC__SERVER__")):
                fail(f"env {e['name']}: the chart puts Graph and server settings in the config ({label})")
        for var, key in [("GRAPH_CDC__KAFKA__OPTIONS__SASL_PASSWORD", "kafka-password"),
                         ("GRAPH_CDC__KAFKA__OPTIONS__SASL_OAUTHBEARER_CLIENT_SECRET", "kafka-oauth-client-secret")]:
            e = env_by_name.get(var)
            if var in expect.get("secret_env", []):
                ref = (e or {}).get("valueFrom", {}).get("secretKeyRef")
                wanted = s.get("existingSecret") or FULLNAME
                if not ref or ref["key"] != key or ref["name"] != wanted:
                    fail(f"{var} is not taken from key {key} of Secret {wanted} ({label}): {e}")
            if e is not None and "value" in e:
                fail(f"{var} has a plain value ({label})")
        # The kafka-tls volume, its mount and the file locations in [kafka.options].
        opts = cfg.get("kafka", {}).get("options", {})
        vols = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        tls = expect.get("tls")  # None, "ca" or "ca+cert" / "cert"
        if tls:
            m = mounts.get("kafka-tls")
            if not m or m["mountPath"] != tls_dir or not m.get("readOnly"):
                fail(f"kafka-tls is not mounted read-only at kafka.tls.mountPath ({label}): {m}")
            paths = sorted(i["path"] for src in vols["kafka-tls"]["projected"]["sources"] for i in src["secret"]["items"])
            want_paths = sorted((["ca.crt"] if "ca" in tls else []) + (["tls.crt", "tls.key"] if "cert" in tls else []))
            if paths != want_paths:
                fail(f"kafka-tls volume holds {paths}, not {want_paths} ({label})")
            want_opts = {}
            if "ca" in tls:
                want_opts["ssl.ca.location"] = f"{tls_dir}/ca.crt"
            if "cert" in tls:
                want_opts["ssl.certificate.location"] = f"{tls_dir}/tls.crt"
                want_opts["ssl.key.location"] = f"{tls_dir}/tls.key"
            for k, v in want_opts.items():
                if opts.get(k) != v:
                    fail(f"[kafka.options] {k} is {opts.get(k)!r}, not {v!r} ({label})")
            for k in {"ssl.ca.location", "ssl.certificate.location", "ssl.key.location"} - set(want_opts):
                if k in opts:
                    fail(f"[kafka.options] sets {k} though nothing is mounted for it ({label})")
            tls_secret = f"{FULLNAME}-kafka-tls"
            if expect.get("tls_secret_created") != (tls_secret in secrets):
                fail(f"Secret {tls_secret} created: {tls_secret in secrets}, expected {expect.get('tls_secret_created')} ({label})")
        else:
            if "kafka-tls" in vols or "kafka-tls" in mounts or any(k.startswith("ssl.") and k.endswith(".location") for k in opts):
                fail(f"TLS files wired though kafka.tls gives none ({label})")
        for k, v in expect.get("options", {}).items():
            if opts.get(k) != v:
                fail(f"[kafka.options] {k} is {opts.get(k)!r}, not {v!r} ({label})")
        for table, kv in expect.get("client_options", {}).items():
            got = cfg.get("kafka", {}).get(table, {})
            if got != kv:
                fail(f"[kafka.{table}] is {got}, not {kv} ({label})")
        if "errors" in expect and cfg.get("errors") != expect["errors"]:
            fail(f"[errors] is {cfg.get('errors')}, not {expect['errors']} ({label})")
        ok(f"Secret, volume, mount, environment and [kafka.*options] wiring ({label})")

        # The credentials volume: the Graph secret (or certificate) and the REST token as
        # read-only files of the Secret, 0440 for the pod's fsGroup, no key optional; the
        # config names them; allow_unauthenticated only when asked for.
        graph, server = cfg.get("graph", {}), cfg.get("server", {})
        use_cert = values.get("useCertificate", False)
        want_items = (["client.crt", "client.key"] if use_cert else
                      ["client-secret"] if expect.get("client_secret") is not None else [])
        want_items += ["auth-token"] if expect.get("token") is not None else []
        if want_items:
            v, m = vols.get("credentials"), mounts.get("credentials")
            secret_name = s.get("existingSecret") or FULLNAME
            if not v or "secret" not in v or v["secret"]["secretName"] != secret_name:
                fail(f"no credentials volume from Secret {secret_name} ({label}): {v}")
            items = v["secret"].get("items", [])
            if sorted(i["key"] for i in items) != sorted(want_items) or any(i["key"] != i["path"] for i in items):
                fail(f"credentials volume holds {items}, not {want_items} ({label})")
            if v["secret"].get("optional") or v["secret"].get("defaultMode") != 0o440:
                fail(f"credentials volume: not optional, mode 0440 expected ({label}): {v['secret']}")
            psc = spec["securityContext"]
            if psc.get("fsGroup") is None or psc.get("fsGroup") != psc.get("runAsGroup"):
                fail(f"mode 0440 files need fsGroup = runAsGroup to be readable by the worker ({label}): {psc}")
            if not m or m["mountPath"] != cred_dir or not m.get("readOnly"):
                fail(f"credentials not mounted read-only at secrets.mountPath ({label}): {m}")
        elif "credentials" in vols:
            fail(f"a credentials volume though the chart mounts nothing ({label})")
        want_graph = ({"certificate_path": f"{cred_dir}/client.crt", "private_key_path": f"{cred_dir}/client.key"} if use_cert
                      else {"client_secret_file": f"{cred_dir}/client-secret"} if expect.get("client_secret") is not None
                      else {})
        for k, v in want_graph.items():
            if graph.get(k) != v:
                fail(f"[graph] {k} is {graph.get(k)!r}, not {v!r} ({label})")
        if "client_secret" in graph or "auth_token" in server:
            fail(f"a secret value in the config ({label})")
        if expect.get("token") is not None and server.get("auth_token_file") != f"{cred_dir}/auth-token":
            fail(f"[server] auth_token_file is {server.get('auth_token_file')!r}, not the mounted file ({label})")
        if server.get("allow_unauthenticated", False) != expect.get("allow_unauthenticated", False):
            fail(f"[server] allow_unauthenticated is {server.get('allow_unauthenticated')!r}, "
                 f"expected {expect.get('allow_unauthenticated', False)} ({label})")
        ok(f"credentials as read-only 0440 files named by the config, allow_unauthenticated "
           f"{'set' if expect.get('allow_unauthenticated') else 'absent'} ({label})")

        # The REST listener's TLS: a Secret volume of its own, the config naming its files,
        # probes (and the test pod) speaking HTTPS.
        rest_tls = expect.get("rest_tls")
        want_scheme = "HTTPS" if rest_tls else "HTTP"
        for name, p in (("liveness", live), ("readiness", ready)):
            if p["httpGet"].get("scheme", "HTTP") != want_scheme:
                fail(f"{name} probe scheme is {p['httpGet'].get('scheme', 'HTTP')}, not {want_scheme} ({label})")
        if rest_tls:
            v, m = vols.get("rest-tls"), mounts.get("rest-tls")
            if not v or v["secret"]["secretName"] != rest_tls["secret"] or v["secret"].get("defaultMode") != 0o440 \
                    or sorted(i["key"] for i in v["secret"]["items"]) != ["tls.crt", "tls.key"]:
                fail(f"rest-tls volume is not tls.crt and tls.key of Secret {rest_tls['secret']}, mode 0440 ({label}): {v}")
            if not m or m["mountPath"] != rest_tls["dir"] or not m.get("readOnly"):
                fail(f"rest-tls not mounted read-only at server.tls.mountPath ({label}): {m}")
            if (server.get("tls_cert_path"), server.get("tls_key_path")) != \
                    (f"{rest_tls['dir']}/tls.crt", f"{rest_tls['dir']}/tls.key"):
                fail(f"[server] tls paths are not the mounted files ({label}): {server}")
            pod = by_kind["Pod"][0]["spec"]["containers"][0]["command"]
            if not any("https://" in a and "--no-check-certificate" in a for a in pod):
                fail(f"the test pod does not speak HTTPS ({label}): {pod}")
            for sm in by_kind.get("ServiceMonitor", []):
                if sm["spec"]["endpoints"][0].get("scheme") != "https":
                    fail(f"the ServiceMonitor does not scrape over HTTPS ({label})")
            ok(f"REST TLS: Secret volume, config paths, HTTPS probes, test pod and scrape ({label})")
        elif "rest-tls" in vols or "tls_cert_path" in server or "tls_key_path" in server:
            fail(f"REST TLS wired though server.tls.secretName is empty ({label})")

        check_test_pod(by_kind, values, expect, label)
        if np_on:
            check_network_policy(by_kind["NetworkPolicy"][0], sts, values, label)

        # Run it as the pod: environment and files from the Secrets, then graph-cdc validate.
        try:
            env, args, config_mount = materialise(sts, secrets, root)
        except PodWouldNotStart as e:
            if wont_start and wont_start in str(e):
                ok(f"the pod would not start: {e} ({label})")
                return
            fail(f"the pod would not start ({label}): {e}")
        if wont_start:
            fail(f"the pod would start though {wont_start} ({label})")
        m, v = config_mount
        if args[:2] != ["run", "--config"] or args[2] != m["mountPath"] or m.get("subPath") not in cm["data"] \
                or v["configMap"]["name"] != cm["metadata"]["name"]:
            fail(f"--config {args[2:]} is not the ConfigMap's file ({label})")
        for k in expect.get("secret_env", []):
            if k not in env:
                fail(f"{k} does not reach the container ({label})")
        if tls:
            check_tls_files(tls_dir, "ca" in tls, "cert" in tls)
            if expect.get("ca_is") and open(os.path.join(tls_dir, "ca.crt")).read() != expect["ca_is"]:
                fail(f"the mounted ca.crt is not the brokers' CA ({label})")
        # The files the config names hold the values (validate reads client_secret_file).
        for key, want_value in [(("server", "auth_token_file"), expect.get("token")),
                                (("graph", "client_secret_file"), expect.get("client_secret")),
                                (("graph", "certificate_path"), s.get("certificate") if use_cert else None),
                                (("graph", "private_key_path"), s.get("privateKey") if use_cert else None)]:
            path = cfg.get(key[0], {}).get(key[1])
            if want_value is None:
                continue
            if not path or not os.path.isfile(path) or open(path).read().strip() != want_value.strip():
                fail(f"{key[0]}.{key[1]} ({path}) does not hold the expected secret in the pod ({label})")
        for key, want_value in expect.get("files", {}).items():
            table, k = key.split(".")
            path = cfg.get(table, {}).get(k)
            if not path or not os.path.isfile(path) or open(path).read() != want_value:
                fail(f"{key} ({path}) does not hold the expected secret in the pod ({label})")
        r = run_validate(binary, toml_text, env, root)
        if r.returncode != 0:
            fail(f"graph-cdc validate on the rendered config, with the pod's environment and files ({label}): {r.stderr}")
        ok(f"graph-cdc validate accepts the rendered config with the pod's environment and files ({label})")
        if rest_tls:
            # validate parses the mounted files: a key that is not PEM is refused, naming it.
            key_path = cfg["server"]["tls_key_path"]
            good_key = open(key_path).read()
            with open(key_path, "w") as f:
                f.write("not a key\n")
            r = run_validate(binary, toml_text, env, root)
            if r.returncode == 0 or "server.tls_key_path" not in r.stderr:
                fail(f"graph-cdc validate accepted a REST TLS key that is not PEM ({label}): {r.stderr.strip()[-300:]}")
            with open(key_path, "w") as f:
                f.write(good_key)
            ok(f"graph-cdc validate refuses a REST TLS key that does not parse, naming server.tls_key_path ({label})")
        if expect.get("token"):
            # validate reads the mounted token: an empty one is refused, naming the key.
            with open(cfg["server"]["auth_token_file"], "w") as f:
                f.write("\n")
            r = run_validate(binary, toml_text, env, root)
            if r.returncode == 0 or "server.auth_token_file" not in r.stderr:
                fail(f"graph-cdc validate accepted an empty auth_token_file ({label}): exit {r.returncode}, "
                     f"{r.stderr.strip()[-300:]}")
            with open(cfg["server"]["auth_token_file"], "w") as f:
                f.write(expect["token"])
        if negative:
            # validate loads the files: a CA that is not PEM must be refused, naming the key.
            with open(os.path.join(tls_dir, "ca.crt"), "w") as f:
                f.write("not a certificate\n")
            r = run_validate(binary, toml_text, env, root)
            if r.returncode == 0 or "ssl.ca.location" not in r.stderr:
                fail(f"graph-cdc validate accepted an ssl.ca.location that is not a certificate ({label}): "
                     f"exit {r.returncode}, {r.stderr.strip()[-300:]}")
            ok(f"graph-cdc validate refuses a CA file that does not parse, naming ssl.ca.location ({label})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def check_chart(binary):
    pki_dir = tempfile.mkdtemp(prefix="graph-cdc-pki-")
    try:
        pki = make_pki(pki_dir)
    finally:
        shutil.rmtree(pki_dir, ignore_errors=True)
    ok("openssl made a CA, a client certificate and key it signed, and a Graph RSA pair")
    real_tls = {"ca": pki["ca.crt"], "cert": pki["client.crt"], "key": pki["client.key"]}

    # Default values plus the two secrets the chart cannot do without (it refuses to render
    # without a token: checked below).
    check_release(binary, "default values with a client secret and a token",
                  {"secrets": {"clientSecret": "graph-client-secret-d3fa17", "authToken": "rest-token-default-19ce"}},
                  pki, expect={"errors": {"tolerance": "none"}, "client_secret": "graph-client-secret-d3fa17",
                               "token": "rest-token-default-19ce"})
    # An API explicitly left open: allow_unauthenticated = true in the config, no token file.
    check_release(binary, "server.allowUnauthenticated", {
        "server": {"allowUnauthenticated": True}, "secrets": {"clientSecret": "graph-client-secret-0pen01"},
    }, pki, expect={"client_secret": "graph-client-secret-0pen01", "allow_unauthenticated": True})
    # The REST API over HTTPS from a kubernetes.io/tls Secret (cert-manager's shape).
    check_release(binary, "server.tls.secretName", {
        "secrets": {"clientSecret": "graph-client-secret-t1s001", "authToken": "rest-token-tls-77ab"},
        "server": {"tls": {"secretName": "graph-cdc-rest-tls", "mountPath": "@ROOT@/rest-tls"}},
        "serviceMonitor": {"enabled": True, "tlsConfig": {"insecureSkipVerify": False, "serverName": "graph-cdc"}},
    }, pki, existing={"graph-cdc-rest-tls": {"tls.crt": pki["client.crt"], "tls.key": pki["client.key"]}},
        expect={"client_secret": "graph-client-secret-t1s001", "token": "rest-token-tls-77ab",
                "rest_tls": {"secret": "graph-cdc-rest-tls", "dir": "@ROOT@/rest-tls"}},
        extra_kinds=("ServiceMonitor",))
    # An existing Secret: its auth-token key is not optional (the pod does not start without
    # it) unless the API is explicitly left open.
    check_release(binary, "existingSecret without auth-token", {"secrets": {"existingSecret": "graph-cdc-creds"}},
                  pki, existing={"graph-cdc-creds": {"client-secret": "graph-client-secret-n0t0k3"}},
                  expect={"client_secret": "graph-client-secret-n0t0k3", "token": ""},
                  wont_start="Secret graph-cdc-creds has no key auth-token")
    check_release(binary, "existingSecret without auth-token, server.allowUnauthenticated", {
        "secrets": {"existingSecret": "graph-cdc-creds"}, "server": {"allowUnauthenticated": True},
    }, pki, existing={"graph-cdc-creds": {"client-secret": "graph-client-secret-n0t0k3"}},
        expect={"client_secret": "graph-client-secret-n0t0k3", "allow_unauthenticated": True})
    # Files of the user's own (a CSI secrets-store volume, here a Secret volume standing in for
    # it) through extraVolumes/extraVolumeMounts, named in config: the chart mounts none.
    check_release(binary, "own credential files through extraVolumes", {
        "config": {"graph": {"client_secret_file": "@ROOT@/vault/graph-client-secret"},
                   "server": {"listen": "0.0.0.0:8083", "auth_token_file": "@ROOT@/vault/rest-token"}},
        "extraVolumes": [{"name": "vault", "secret": {"secretName": "vault-synced", "defaultMode": 0o440}}],
        "extraVolumeMounts": [{"name": "vault", "mountPath": "@ROOT@/vault", "readOnly": True}],
        "networkPolicy": {"enabled": False},
    }, pki, existing={"vault-synced": {"graph-client-secret": "graph-client-secret-v4ult0", "rest-token": "rest-token-v4ult0"}},
        expect={"files": {"graph.client_secret_file": "graph-client-secret-v4ult0",
                          "server.auth_token_file": "rest-token-v4ult0"}})

    all_on = yaml.safe_load(open(os.path.join(CHART, "ci", "all-on-values.yaml")))
    all_on = merge(all_on, {"secrets": {"certificate": pki["graph.crt"], "privateKey": pki["graph.key"]},
                            "kafka": {"tls": real_tls}})
    check_release(binary, "all options on", all_on, pki, extra_kinds=("ServiceMonitor", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Ingress"),
                  expect={"tls": "ca+cert", "tls_secret_created": True, "token": all_on["secrets"]["authToken"],
                          "secret_env": ["GRAPH_CDC__KAFKA__OPTIONS__SASL_PASSWORD",
                                         "GRAPH_CDC__KAFKA__OPTIONS__SASL_OAUTHBEARER_CLIENT_SECRET"],
                          "options": {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"},
                          "client_options": {"producer_options": {"batch.size": "1000000", "message.max.bytes": "4000000",
                                                                  "compression.type": "zstd"},
                                             "consumer_options": {"fetch.max.bytes": "52428800"},
                                             "admin_options": {"socket.timeout.ms": "30000"}},
                          "errors": {"tolerance": "all", "dead_letter_topic": "graph-cdc.dlq"}})

    # Mutual TLS with Strimzi: the KafkaUser's Secret (user.crt, user.key, and ca.crt = the
    # clients CA, not to be trusted) and the cluster CA's Secret.
    check_release(binary, "mTLS, Strimzi KafkaUser and cluster CA Secrets", {
        "config": {"kafka": {"bootstrap_servers": "my-cluster-kafka-bootstrap.kafka.svc:9093"}},
        "secrets": {"clientSecret": "graph-client-secret-5f1e0c", "authToken": "rest-token-5f1e0c"},
        "kafka": {"tls": {"existingSecret": "graph-cdc-kafka-user", "clientCertificate": True, "certKey": "user.crt",
                          "keyKey": "user.key", "caSecret": "my-cluster-cluster-ca-cert"}},
    }, pki, existing={
        "graph-cdc-kafka-user": {"user.crt": pki["client.crt"], "user.key": pki["client.key"], "ca.crt": pki["clients-ca.crt"],
                      "user.password": "p12-password-9a7c2e"},
        "my-cluster-cluster-ca-cert": {"ca.crt": pki["ca.crt"], "ca.password": "ca-p12-password-33b1"},
    }, expect={"tls": "ca+cert", "tls_secret_created": False, "ca_is": pki["ca.crt"],
               "options": {"security.protocol": "SSL"},
               "client_secret": "graph-client-secret-5f1e0c", "token": "rest-token-5f1e0c"})

    # SASL_SSL + SCRAM-SHA-512, a private CA given as a value (created Secret, decoded).
    check_release(binary, "SASL_SSL + SCRAM-SHA-512, CA from values", {
        "config": {"kafka": {"options": {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                         "sasl.username": "graph-cdc"}}},
        "secrets": {"clientSecret": "graph-client-secret-81d2aa", "authToken": "rest-token-81d2aa",
                    "kafkaPassword": "scram-password-0b9f4d77"},
        "kafka": {"tls": {"ca": pki["ca.crt"]}},
    }, pki, expect={"tls": "ca", "tls_secret_created": True, "ca_is": pki["ca.crt"],
                    "secret_env": ["GRAPH_CDC__KAFKA__OPTIONS__SASL_PASSWORD"],
                    "options": {"security.protocol": "SASL_SSL"},
                    "client_secret": "graph-client-secret-81d2aa", "token": "rest-token-81d2aa"}, negative=True)

    # OAUTHBEARER/OIDC: client secret from the user's existing Secret; CA from a Secret alone.
    check_release(binary, "OAUTHBEARER/OIDC, existing Secrets", {
        "config": {"kafka": {"options": {
            "security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER", "sasl.oauthbearer.method": "oidc",
            "sasl.oauthbearer.client.id": "graph-cdc",
            "sasl.oauthbearer.token.endpoint.url": "https://login.example.invalid/realms/kafka/protocol/openid-connect/token",
            "sasl.oauthbearer.scope": "kafka"}}},
        "secrets": {"existingSecret": "graph-cdc-credentials"},
        "kafka": {"tls": {"caSecret": "kafka-ca"}},
    }, pki, existing={
        "graph-cdc-credentials": {"client-secret": "graph-client-secret-c0ffee", "auth-token": "rest-token-4e4e",
                                  "kafka-oauth-client-secret": "oidc-client-secret-7d3b19"},
        "kafka-ca": {"ca.crt": pki["ca.crt"]},
    }, expect={"tls": "ca", "tls_secret_created": False, "ca_is": pki["ca.crt"],
               "secret_env": ["GRAPH_CDC__KAFKA__OPTIONS__SASL_OAUTHBEARER_CLIENT_SECRET"],
               "options": {"sasl.oauthbearer.method": "oidc", "security.protocol": "SASL_SSL"},
               "client_secret": "graph-client-secret-c0ffee", "token": "rest-token-4e4e"})

    # Confluent Cloud: SASL_SSL + PLAIN with an API key and secret; public CAs, nothing mounted.
    check_release(binary, "Confluent Cloud, SASL_SSL + PLAIN, public CA", {
        "config": {"kafka": {"bootstrap_servers": "pkc-00000.westeurope.azure.confluent.cloud:9092",
                             "options": {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
                                         "sasl.username": "ABCDEFGHIJKLMNOP"}}},
        "secrets": {"clientSecret": "graph-client-secret-77aa01", "authToken": "rest-token-77aa01",
                    "kafkaPassword": "cc-api-secret-Zq81"},
        "networkPolicy": {"enabled": False},
    }, pki, expect={"secret_env": ["GRAPH_CDC__KAFKA__OPTIONS__SASL_PASSWORD"],
                    "options": {"sasl.mechanism": "PLAIN"},
                    "client_secret": "graph-client-secret-77aa01", "token": "rest-token-77aa01"})

    chart = helm.Chart.load(CHART)
    defaults = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))
    for bad in [{"replicaCount": "two"}, {"service": {"port": "http"}}, {"imagePullPolicy": "Always"},
                {"errors": {"tolerance": "some"}},
                {"errors": {"tolerance": "all"}},
                {"kafka": {"producerOptions": {"transactional.id": "x"}}},
                {"kafka": {"consumerOptions": {"isolation.level": "read_uncommitted"}}},
                {"config": {"kafka": {"options": {"group.id": "mine"}}}},
                {"kafka": {"adminOptions": {"nested": {"map": "x"}}}},
                {"kafka": {"tls": {"mountPath": "relative/dir"}}},
                {"kafka": {"tls": {"ca": "not PEM"}}},
                {"kafka": {"tls": {"secretName": "typo"}}},
                {"server": {"allowUnauthenticated": "yes"}}, {"server": {"allow_unauthenticated": True}},
                {"secrets": {"mountPath": "relative"}},
                {"extraVolumes": [{"emptyDir": {}}]}, {"extraVolumeMounts": [{"name": "x"}]},
                {"networkPolicy": {"enabled": "true"}},
                {"autoscaling": {"maxReplicas": 0}}, {"autoscaling": {"targetCPUUtilizationPercentage": 150}},
                {"autoscaling": {"enabled": "yes"}},
                {"networkPolicy": {"egress": {"kafka": {"ports": []}}}},
                {"networkPolicy": {"egress": {"dns": {"ports": [{"port": 53, "protocol": "ICMP"}]}}}},
                {"networkPolicy": {"ingress": {"clientPodLabels": {"graph-cdc-client": True}}}}]:
        try:
            chart.validate_schema(merge(defaults, bad))
        except helm.HelmError:
            continue
        fail(f"values.schema.json accepted {bad}")
    ok("values.schema.json rejects bad values (types, tolerance, owned librdkafka options, TLS values, "
       "server, extra volumes, NetworkPolicy)")
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    for bad, says in [
        ({"kafka": {"tls": {"existingSecret": "s", "ca": pem}}}, "not both"),
        ({"kafka": {"tls": {"cert": pem}}}, "kafka.tls.cert and kafka.tls.key"),
        ({"kafka": {"tls": {"clientCertificate": True}}}, "kafka.tls.clientCertificate"),
        ({"kafka": {"tls": {"caSecret": "ca", "caKey": ""}}}, "kafka.tls.caKey"),
        ({"kafka": {"tls": {"ca": pem}}, "config": {"kafka": {"options": {"ssl.ca.location": "/x"}}}},
         "config.kafka.options.ssl.ca.location"),
        ({"config": {"errors": {"tolerance": "all"}}}, "config.errors"),
        ({"kafka": {"tls": {"existingSecret": FULLNAME, "clientCertificate": True}}}, "the chart creates"),
        ({"config": {"server": {"auth_token": "x"}}}, "config.server.auth_token: a secret in the ConfigMap"),
        ({"config": {"graph": {"client_secret": "x"}}}, "config.graph.client_secret: a secret in the ConfigMap"),
        ({"config": {"notifications": {"client_state": "x"}}},
         "config.notifications.client_state: a secret in the ConfigMap"),
        ({"config": {"notifications": {"eventhub": {"connection_string": "Endpoint=sb://x/;SharedAccessKey=y"}}}},
         "config.notifications.eventhub.connection_string: a secret in the ConfigMap"),
        ({"notificationsIngress": {"enabled": True}}, "notificationsIngress.host: required"),
        ({"notificationsIngress": {"enabled": True, "host": "cdc.example.com"},
          "config": {"notifications": {"public_url": "https://elsewhere.example.com/notifications"}}},
         "config.notifications.public_url: must be https://cdc.example.com/notifications"),
        ({"config": {"server": {"allow_unauthenticated": True}}}, "set server.allowUnauthenticated instead"),
        ({"config": {"server": {"auth_token_file": "/x"}}}, "give the REST token one way"),
        ({"config": {"graph": {"client_secret_file": "/x"}}, "secrets": {"clientSecret": "s"}},
         "give the Graph client secret one way"),
        ({"config": {"graph": {"certificate_path": "/x"}}}, "config.graph.certificate_path"),
        ({"secrets": {"mountPath": "/tmp"}}, "secrets.mountPath"),
        ({"autoscaling": {"enabled": True, "maxReplicas": 9}},
         "autoscaling.maxReplicas (9) is over config.worker.shards (8)"),
        ({"autoscaling": {"enabled": True, "maxReplicas": 5}, "config": {"worker": {"shards": 4}}},
         "autoscaling.maxReplicas (5) is over config.worker.shards (4)"),
    ]:
        try:
            chart.render(merge({"secrets": {"authToken": "t"}}, bad), name=RELEASE, namespace="cdc", is_install=True)
        except helm.HelmError as e:
            if says not in str(e):
                fail(f"rendering {bad} failed without naming {says}: {e}")
            continue
        fail(f"the chart rendered contradictory values {bad}")
    ok("the templates refuse contradictory TLS values, config.errors, secrets in config and credentials "
       "given two ways, an autoscaler past the shard count, naming the value")
    # No token, no render: the REST API would be open to anyone who reaches the port.
    for values in [{}, {"secrets": {"clientSecret": "s"}}, {"server": {"allowUnauthenticated": False}}]:
        try:
            chart.render(values, name=RELEASE, namespace="cdc", is_install=True)
        except helm.HelmError as e:
            if "secrets.authToken: required" not in str(e) or "server.allowUnauthenticated" not in str(e):
                fail(f"rendering without a token failed without saying how to give one: {e}")
            continue
        fail(f"the chart rendered without a REST token or server.allowUnauthenticated: {values}")
    ok("the chart refuses to render without secrets.authToken, existingSecret or server.allowUnauthenticated, saying so")
    meta = yaml.safe_load(open(os.path.join(CHART, "Chart.yaml")))
    cargo = open(os.path.join(ROOT, "Cargo.toml")).read()
    version = re.search(r'^version = "([^"]+)"', cargo, re.M).group(1)
    if meta["apiVersion"] != "v2" or meta["appVersion"] != version:
        fail(f"Chart.yaml: apiVersion v2 and appVersion {version} expected")
    ok("Chart.yaml appVersion equals the crate version")


def check_compose(spec_path, graph_cdc_binary):
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
    # The image's binaries must accept what compose passes them: run each service's command
    # through the binary built here (`--help` appended, so nothing is served).
    for name, svc in compose["services"].items():
        if "build" not in svc:
            continue
        binary = (svc.get("entrypoint") or ["graph-cdc"])[0]
        path = os.path.join(os.path.dirname(graph_cdc_binary), binary)
        if not os.path.exists(path):
            fail(f"service {name} runs {binary}, which this workspace does not build")
        # `${VAR:-default}` as compose resolves it with VAR unset.
        argv = [re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", a) for a in svc.get("command", [])]
        r = subprocess.run([path, *argv, "--help"], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"service {name}: `{binary} {' '.join(argv)}` is refused: {r.stderr.strip()}")
    ok("docker-compose.yml matches the Compose specification; images are apache/kafka or built "
       "here; each service's command is accepted by the binary it runs")

    # Published ports bind the host's loopback only; graph-cdc runs with a token.
    for name, svc in compose["services"].items():
        for p in svc.get("ports", []):
            host_ip = p.get("host_ip") if isinstance(p, dict) else (str(p).split(":")[0] if str(p).count(":") == 2 else None)
            if host_ip != "127.0.0.1":
                fail(f"service {name} publishes {p} beyond 127.0.0.1")
    cdc = compose["services"]["graph-cdc"]
    if cdc.get("ports") != ["127.0.0.1:8083-8085:8083"]:
        fail(f"graph-cdc must publish 127.0.0.1:8083-8085:8083 (8083, and a port each for --scale 3), not {cdc.get('ports')}")
    # `--scale graph-cdc=N` needs no fixed name or identity: each container's hostname is
    # its worker_id (distinct static members of the workers' group).
    env = cdc.get("environment") or {}
    if "container_name" in cdc or "hostname" in cdc or "GRAPH_CDC__KAFKA__WORKER_ID" in env:
        fail("graph-cdc in compose must not fix container_name, hostname or worker_id: --scale needs distinct workers")
    health = " ".join(cdc["healthcheck"]["test"])
    if "/readyz" not in health:
        fail("graph-cdc's health check must GET /readyz (open without the token)")
    # The service as compose starts it: `${VAR:-default}` resolved with no .env, the image's
    # /etc/graph-cdc being config/ here; `graph-cdc validate` must accept it.
    env = {k: re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(v)) for k, v in cdc["environment"].items()}
    token = env.get("GRAPH_CDC__SERVER__AUTH_TOKEN", "")
    if len(token) < 16:
        fail("graph-cdc in compose has no GRAPH_CDC__SERVER__AUTH_TOKEN (with a development default)")
    argv = [re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", a) for a in cdc["command"]]
    config = argv[argv.index("--config") + 1].replace("/etc/graph-cdc/", os.path.join(ROOT, "config") + "/")
    cfg = tomllib.load(open(config, "rb"))
    if cfg.get("server", {}).get("auth_token") != token:
        fail("config/compose.toml's development token differs from docker-compose.yml's default")
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    r = subprocess.run([graph_cdc_binary, "validate", "--config", config], env={**base, **env},
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        fail(f"graph-cdc validate refuses compose's graph-cdc (config/compose.toml with its environment): {r.stderr}")
    if token in r.stdout + r.stderr:
        fail("graph-cdc validate printed compose's REST token")
    # The token is what lets it start: without it, the same service is refused.
    with tempfile.TemporaryDirectory() as d:
        bare = os.path.join(d, "compose.toml")
        with open(bare, "w") as f:
            f.write(re.sub(r"(?m)^auth_token\s*=.*$", "", open(config).read()))
        bare_env = {k: v for k, v in env.items() if k != "GRAPH_CDC__SERVER__AUTH_TOKEN"}
        r = subprocess.run([graph_cdc_binary, "validate", "--config", bare], env={**base, **bare_env},
                           capture_output=True, text=True, timeout=120)
        if r.returncode == 0 or "server.auth_token: required" not in r.stderr:
            fail(f"compose's graph-cdc without its token was not refused for want of one: exit {r.returncode}, {r.stderr[-300:]}")
    ok("compose publishes only on 127.0.0.1 (8083, 8083-8085 for --scale 3, no fixed worker identity); graph-cdc runs with a token (.env or a development "
       "default), health-checked on /readyz; its config passes graph-cdc validate, and is refused without the token")


DOCKERFILE_INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                           "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def check_dockerfile():
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    # The parser's part: logical lines (continuations joined), known instructions, stages.
    logical, cur = [], ""
    for line in text.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if cur and line.lstrip().startswith("#"):
            continue  # comments inside a continued instruction are dropped by Docker
        cur += line.rstrip()
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        logical.append(cur.strip())
        cur = ""
    if cur:
        fail("Dockerfile: the last instruction ends with a line continuation")
    stages, steps = [], {}
    for ins in logical:
        word = ins.split(None, 1)[0]
        if word.upper() not in DOCKERFILE_INSTRUCTIONS:
            fail(f"Dockerfile: unknown instruction {word!r}")
        if word.upper() == "FROM":
            m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?$", ins, re.I)
            if not m:
                fail(f"Dockerfile: bad FROM {ins!r}")
            stages.append(m.group(2) or str(len(stages)))
            steps[stages[-1]] = []
            continue
        if not stages:
            fail(f"Dockerfile: {word} before any FROM")
        steps[stages[-1]].append(ins)
        for ref in re.findall(r"--from=(\S+)", ins):
            if ref not in stages[:-1]:
                fail(f"Dockerfile: COPY --from={ref} names no earlier stage")
        if word.upper() in ("CMD", "ENTRYPOINT") and ins.split(None, 1)[1].startswith("["):
            try:
                json.loads(ins.split(None, 1)[1])
            except json.JSONDecodeError:
                fail(f"Dockerfile: {word}'s exec form is not a JSON array: {ins!r}")
    if "build" not in stages or len(stages) < 2:
        fail("Dockerfile: a `build` stage and a runtime stage expected")
    build, runtime = " ".join(steps["build"]), " ".join(steps[stages[-1]])
    if "cargo build --release --locked --package graph-cdc --package graph-sim --bins" not in build:
        fail("the Dockerfile's build stage does not build the two shipped binaries")
    # It builds only what it ships: no tests, benchmarks or test kit sources in the image's
    # build context (the test kit's manifest is needed because the workspace lists it).
    for ins in steps["build"]:
        if ins.upper().startswith("COPY") and re.search(r"\s(tests|benches|examples|fuzz|crates/graph-cdc-testkit(?!/Cargo\.toml))(/|\s|$)", ins):
            fail(f"the Dockerfile copies what it does not ship: {ins!r}")
    if "/src/target/release/graph-sim" not in runtime:
        fail("the runtime stage must ship graph-sim (the compose stack's simulator)")
    # librdkafka with system OpenSSL (rdkafka `ssl`), static libcurl, zstd: the build needs
    # these; aws-lc (rustls) needs cmake. The runtime links libssl3 and trusts public CAs.
    # libcurl4-openssl-dev: librdkafka's configure probes -lcurl before it enables OIDC.
    for pkg in ("libssl-dev", "pkg-config", "perl", "make", "cmake", "libcurl4-openssl-dev"):
        if not re.search(rf"apt-get install[^&]*\s{re.escape(pkg)}(\s|$)", build):
            fail(f"the Dockerfile's build stage does not install {pkg}")
    for pkg in ("libssl3", "ca-certificates"):
        if not re.search(rf"apt-get install[^&]*\s{re.escape(pkg)}(\s|$)", runtime):
            fail(f"the Dockerfile's runtime stage does not install {pkg}")
    if "USER 10001" not in runtime or "EXPOSE 8083" not in runtime or 'ENTRYPOINT ["graph-cdc"]' not in runtime:
        fail("the runtime stage must be non-root, expose 8083 and run graph-cdc")
    if re.search(r"(?i)(secret|password|token)\s*=", text):
        fail("the Dockerfile looks like it bakes in a secret")
    ok("Dockerfile: parses; release build with libssl-dev, pkg-config, perl, make, cmake, libcurl headers; "
       "non-root runtime with libssl3 and CA certificates; no secrets")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    if not shutil.which("openssl"):
        fail("the openssl CLI is needed to make test certificates (apt-get install openssl)")
    check_chart(os.path.abspath(sys.argv[1]))
    check_compose(sys.argv[2], os.path.abspath(sys.argv[1]))
    check_dockerfile()
    print(f"{checks} passed, 0 failed")
