"""A Kafka Connect client library, kafka-connect-py, against a running graph-cdc worker.

Usage: connect_client.py BASE_URL CONNECTOR TOKEN

Runs what an operator's tooling does against Kafka Connect: the read flow (cluster info,
connectors with and without `expand`, a connector, its config, status, tasks, a task's
status, the plugins, a missing connector) and the stop -> offsets -> alter -> reset -> resume
flow. The library speaks HTTP Basic (Connect's own REST security); graph-cdc takes the token
as the password. It has no offsets calls, so those go through `requests` (which the library
itself uses) with a Bearer token, as Connect's documentation writes them.

Prints `ok <step>` per step and `connect client flow: OK` at the end; any failed check raises
(exit status 1). The token is never printed.
"""

import json
import sys
import time

import requests
from requests.exceptions import HTTPError
from kafka_connect import KafkaConnect


def ok(step, detail=""):
    print(f"ok {step}" + (f": {detail}" if detail else ""), flush=True)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def wait_for(what, f, timeout=90.0):
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def http_error(call):
    """The response of a call that must fail with an HTTPError."""
    try:
        call()
    except HTTPError as e:
        return e.response
    raise AssertionError("the call did not fail")


def connect_error(r, code):
    expect(r.status_code == code, f"status {r.status_code}, not {code}: {r.text}")
    body = r.json()
    expect(body.get("error_code") == code and isinstance(body.get("message"), str), f"error body: {body}")


def key(partition):
    return json.dumps(partition, sort_keys=True)


def main():
    base, name, token = sys.argv[1:4]
    kc = KafkaConnect(url=base, auth=f"operator:{token}")
    bearer = {"Authorization": f"Bearer {token}"}
    offsets_url = f"{base}/connectors/{name}/offsets"

    def state():
        return kc.get_connector_status(name)["connector"]["state"]

    # Without credentials: 401, a JSON error and a Bearer challenge.
    r = http_error(lambda: KafkaConnect(url=base).list_connectors())
    connect_error(r, 401)
    expect(r.headers.get("WWW-Authenticate", "").lower().startswith("bearer"), r.headers)
    r = http_error(lambda: KafkaConnect(url=base, auth="operator:wrong").list_connectors())
    connect_error(r, 401)
    ok("unauthenticated calls refused")

    # The read flow.
    expect("version" in kc.get_cluster_info(), "cluster info")
    expect(kc.list_connectors() == [name], "list connectors")
    expanded = kc.list_connectors(expand="status")
    expect(expanded[name]["status"]["connector"]["state"] == "RUNNING", expanded)
    expect(kc.list_connectors(state="running") == [name], "filter by state")
    expect(kc.list_connectors(expand="info")[name]["info"]["name"] == name, "expand info")
    ok("list connectors")
    connector = kc.get_connector(name)
    expect(connector["name"] == name and connector["type"] == "source", connector)
    ok("get connector")
    config = kc.get_connector_config(name)
    expect(all(isinstance(v, str) for v in config.values()), "a flat string map")
    expect(config["connector.class"] == "graph-cdc" and config["name"] == name, config)
    expect(config["graph.client_secret"] == "***", "the client secret is masked")
    ok("get connector config", f"{len(config)} keys")
    status = kc.get_connector_status(name)
    expect(status["connector"]["state"] == "RUNNING", status)
    expect(status["tasks"] and all(t["state"] == "RUNNING" for t in status["tasks"]), status)
    ok("get connector status", f"{len(status['tasks'])} tasks")
    tasks = kc.list_connector_tasks(name)
    ids = sorted(t["id"]["task"] for t in tasks)
    expect(ids == sorted(t["id"] for t in status["tasks"]), "tasks and status agree")
    expect(all(t["id"]["connector"] == name for t in tasks), "task ids name the connector")
    task = tasks[0]["id"]["task"]
    task_status = kc.get_connector_task_status(name, task)
    expect(task_status["id"] == task and task_status["state"] == "RUNNING", task_status)
    expect("worker_id" in task_status, task_status)
    ok("list tasks and task status", f"{len(tasks)} tasks")
    plugins = kc.list_connector_plugins()
    expect([p["class"] for p in plugins] == ["graph-cdc"] and plugins[0]["type"] == "source", plugins)
    ok("list connector plugins")
    connect_error(http_error(lambda: kc.get_connector("no-such-connector")), 404)
    connect_error(http_error(lambda: kc.get_connector_task_status(name, "x")), 400)
    ok("errors are Connect's JSON")
    expect(kc.restart_connector_task(name, task) is None, "task restart: 204")
    kc.pause_connector(name)
    wait_for("PAUSED", lambda: state() == "PAUSED")
    kc.resume_connector(name)
    wait_for("RUNNING", lambda: state() == "RUNNING")
    ok("restart task, pause, resume")

    # Offsets change only while STOPPED: 400 (not 409, which clients retry) before that.
    current = requests.get(offsets_url, headers=bearer).json()["offsets"]
    expect(len(current) >= 2, f"offsets: {len(current)}")
    r = requests.patch(offsets_url, headers=bearer, json={"offsets": [{"partition": current[0]["partition"], "offset": None}]})
    connect_error(r, 400)
    connect_error(requests.delete(offsets_url, headers=bearer), 400)
    ok("offsets refused while RUNNING")

    kc.stop_connector(name)
    wait_for("STOPPED", lambda: state() == "STOPPED")
    r = requests.get(offsets_url, headers=bearer)
    expect(r.status_code == 200, r.text)
    before = {key(o["partition"]): o for o in r.json()["offsets"]}
    expect(len(before) >= 2, "offsets of a stopped connector")
    keep, reset = list(before.values())[:2]
    ok("stop and get offsets", f"{len(before)} partitions")

    # Alter: write one partition's offset back as it is, reset another.
    body = {"offsets": [
        {"partition": keep["partition"], "offset": keep["offset"]},
        {"partition": reset["partition"], "offset": None},
    ]}
    r = requests.patch(offsets_url, headers=bearer, json=body)
    expect(r.status_code == 200, r.text)
    expect("altered" in r.json()["message"], r.text)
    after = {key(o["partition"]): o for o in requests.get(offsets_url, headers=bearer).json()["offsets"]}
    expect(after[key(keep["partition"])]["offset"] == keep["offset"], "the written offset")
    expect(key(reset["partition"]) not in after, "the reset partition has no offset")
    expect(len(after) == len(before) - 1, "nothing else changed")
    connect_error(requests.patch(offsets_url, headers=bearer, json={"offsets": []}), 400)
    connect_error(requests.patch(offsets_url, headers=bearer, json={"offsets": [{"partition": keep["partition"]}]}), 400)
    r = requests.patch(offsets_url, headers={**bearer, "Content-Type": "text/plain"}, data=json.dumps(body))
    connect_error(r, 415)
    ok("alter offsets")

    r = requests.delete(offsets_url, headers=bearer)
    expect(r.status_code == 200 and "reset" in r.json()["message"], r.text)
    expect(requests.get(offsets_url, headers=bearer).json()["offsets"] == [], "no offsets left")
    ok("reset offsets")

    kc.resume_connector(name)
    wait_for("RUNNING", lambda: state() == "RUNNING")
    wait_for(
        "offsets committed again",
        lambda: len(requests.get(offsets_url, headers=bearer).json()["offsets"]) >= len(before),
    )
    ok("resume")
    print("connect client flow: OK", flush=True)


if __name__ == "__main__":
    main()
