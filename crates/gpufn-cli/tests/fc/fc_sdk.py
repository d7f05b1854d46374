#!/usr/bin/env python3
"""Drives gpufn's FC 3.0 API with the official Python SDK (alibabacloud-fc20230330), exactly as a
Function Compute user would, then tries every signature failure. Exits non-zero on the first
surprise. Run by the Rust end-to-end test `fc::the_official_fc_sdk_drives_gpufn`.

Usage: fc_sdk.py ENDPOINT(host:port) ACCESS_KEY_ID SECRET IMAGE(container image in a registry)
"""
import base64
import hashlib
import http.client
import io
import json
import sys
import time
import zipfile

from alibabacloud_fc20230330 import models as m
from alibabacloud_fc20230330.client import Client
from alibabacloud_tea_openapi import utils_models as open_api_models
from alibabacloud_tea_openapi.utils import Utils as SignUtils

ENDPOINT, AK, SECRET, IMAGE = sys.argv[1:5]

APP = r'''
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, code, body):
        self.send_response(code)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self.reply(200, b"ok")
    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        data = self.rfile.read(n)
        if self.path == "/invoke":
            if data == b"slow":
                import time
                time.sleep(5)
            greeting = os.environ.get("GREETING", "")
            self.reply(200, b"zipfn:" + data + b":" + greeting.encode())
        else:
            self.reply(404, b"no")
ThreadingHTTPServer(("127.0.0.1", int(os.environ["FC_SERVER_PORT"])), H).serve_forever()
'''


def zip_b64():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("app.py", APP)
    return base64.b64encode(buf.getvalue()).decode()


def client(ak=AK, secret=SECRET):
    return Client(open_api_models.Config(access_key_id=ak, access_key_secret=secret,
                                         endpoint=ENDPOINT, protocol="http", read_timeout=60000))


def expect_error(fn, code, status):
    try:
        fn()
    except Exception as e:  # the SDK raises its ClientException / TeaException
        got_code = getattr(e, "code", None)
        got_status = getattr(e, "status_code", None) or (getattr(e, "data", None) or {}).get("statusCode")
        assert got_code == code, f"expected {code}, got {got_code}: {e}"
        if status is not None and got_status is not None:
            assert int(got_status) == status, f"expected HTTP {status}, got {got_status}: {e}"
        return
    raise AssertionError(f"expected {code}, but the call succeeded")


def step(msg):
    print(f"- {msg}", flush=True)


c = client()
gpu = {"gpuMemorySize": 2048, "gpuType": "fc.gpu.tesla.1"}

step("CreateFunction: a custom runtime from a zip, with gpuConfig")
zip_fn = c.create_function(m.CreateFunctionRequest().from_map({"body": {
    "functionName": "zipfn", "runtime": "custom.debian10", "cpu": 1, "memorySize": 512,
    "diskSize": 512, "timeout": 60, "instanceConcurrency": 2,
    "code": {"zipFile": zip_b64()},
    "customRuntimeConfig": {"command": ["python3", "app.py"], "port": 9000,
                            "healthCheckConfig": {"httpGetUrl": "/"}},
    "gpuConfig": gpu,
}}))
assert zip_fn.status_code == 200, zip_fn.status_code
assert zip_fn.body.function_name == "zipfn"
assert zip_fn.body.gpu_config.gpu_memory_size == 2048
assert zip_fn.body.gpu_config.gpu_type == "fc.gpu.tesla.1"
assert zip_fn.body.state == "Active"
assert zip_fn.headers.get("x-fc-request-id"), zip_fn.headers

step("CreateFunction again: FunctionAlreadyExists")
expect_error(lambda: c.create_function(m.CreateFunctionRequest().from_map({"body": {
    "functionName": "zipfn", "runtime": "custom.debian10", "code": {"zipFile": zip_b64()},
    "customRuntimeConfig": {"command": ["python3", "app.py"]}, "gpuConfig": gpu}})),
    "FunctionAlreadyExists", 409)

step("CreateFunction: a custom container from the local registry")
ctr = c.create_function(m.CreateFunctionRequest().from_map({"body": {
    "functionName": "ctrfn", "runtime": "custom-container", "memorySize": 512,
    "customContainerConfig": {"image": IMAGE, "port": 9000,
                              "healthCheckConfig": {"httpGetUrl": "/health"}},
    "gpuConfig": {"gpuMemorySize": 1024},
}}))
assert ctr.body.custom_container_config.image.startswith(IMAGE + "@sha256:"), ctr.body.custom_container_config.image

step("CreateFunction with what gpufn cannot run: InvalidArgument")
expect_error(lambda: c.create_function(m.CreateFunctionRequest().from_map({"body": {
    "functionName": "nogpu", "runtime": "custom.debian10", "code": {"zipFile": zip_b64()},
    "customRuntimeConfig": {"command": ["python3", "app.py"]}}})), "InvalidArgument", 400)

step("GetFunction, ListFunctions (prefix, limit, nextToken)")
g = c.get_function("zipfn", m.GetFunctionRequest())
assert g.body.runtime == "custom.debian10" and g.body.instance_concurrency == 2 and g.body.memory_size == 512
lst = c.list_functions(m.ListFunctionsRequest(prefix="zip"))
assert [f.function_name for f in lst.body.functions] == ["zipfn"], lst.body
page1 = c.list_functions(m.ListFunctionsRequest(limit=1))
assert len(page1.body.functions) == 1 and page1.body.next_token
page2 = c.list_functions(m.ListFunctionsRequest(limit=1, next_token=page1.body.next_token))
assert {page1.body.functions[0].function_name, page2.body.functions[0].function_name} == {"ctrfn", "zipfn"}
expect_error(lambda: c.get_function("nope", m.GetFunctionRequest()), "FunctionNotFound", 404)

step("UpdateFunction: environment variables")
u = c.update_function("zipfn", m.UpdateFunctionRequest().from_map({"body": {
    "environmentVariables": {"GREETING": "hi"}}}))
assert u.body.environment_variables == {"GREETING": "hi"}, u.body.environment_variables

step("InvokeFunction sync: the body goes to /invoke")
r = c.invoke_function("zipfn", m.InvokeFunctionRequest(body=io.BytesIO(b"ping")))
assert r.status_code == 200, r.status_code
assert r.body.read() == b"zipfn:ping:hi"
r = c.invoke_function("ctrfn", m.InvokeFunctionRequest(body=io.BytesIO(b"pong")))
assert r.body.read() == b"testapp-invoke:pong"

step("InvokeFunction async (stateful task id), GetAsyncTask, ListAsyncTasks")
r = c.invoke_function_with_options(
    "zipfn", m.InvokeFunctionRequest(body=io.BytesIO(b"later")),
    m.InvokeFunctionHeaders(x_fc_invocation_type="Async", x_fc_async_task_id="task-1"),
    __import__("darabonba.runtime", fromlist=["RuntimeOptions"]).RuntimeOptions())
assert r.status_code == 202, r.status_code
for _ in range(300):
    t = c.get_async_task("zipfn", "task-1", m.GetAsyncTaskRequest())
    if t.body.status in ("Succeeded", "Failed", "Stopped", "Expired"):
        break
    time.sleep(0.05)
assert t.body.status == "Succeeded", t.body.to_map()
assert t.body.return_payload == "zipfn:later:hi", t.body.to_map()
tasks = c.list_async_tasks("zipfn", m.ListAsyncTasksRequest())
assert [x.task_id for x in tasks.body.tasks] == ["task-1"], tasks.body.to_map()
assert tasks.body.tasks[0].status == "Succeeded"

step("StopAsyncTask: a running task becomes Stopped")
rt = __import__("darabonba.runtime", fromlist=["RuntimeOptions"]).RuntimeOptions()
c.invoke_function_with_options("zipfn", m.InvokeFunctionRequest(body=io.BytesIO(b"slow")),
                               m.InvokeFunctionHeaders(x_fc_invocation_type="Async", x_fc_async_task_id="task-stop"), rt)
for _ in range(300):
    if c.get_async_task("zipfn", "task-stop", m.GetAsyncTaskRequest()).body.status == "Running":
        break
    time.sleep(0.05)
c.stop_async_task("zipfn", "task-stop", m.StopAsyncTaskRequest())
t = c.get_async_task("zipfn", "task-stop", m.GetAsyncTaskRequest())
assert t.body.status == "Stopped", t.body.to_map()

step("Provision config: target = min instances")
c.put_provision_config("zipfn", m.PutProvisionConfigRequest().from_map({"body": {"target": 1}}))
for _ in range(300):
    pc = c.get_provision_config("zipfn", m.GetProvisionConfigRequest())
    if pc.body.current == 1:
        break
    time.sleep(0.05)
assert pc.body.target == 1 and pc.body.current == 1, pc.body.to_map()
inst = c.list_instances("zipfn", m.ListInstancesRequest())
assert len(inst.body.instances) >= 1, inst.body.to_map()
c.delete_provision_config("zipfn", m.DeleteProvisionConfigRequest())
assert c.get_provision_config("zipfn", m.GetProvisionConfigRequest()).body.target == 0

step("Provision config: scheduled actions and target tracking round-trip")
actions = [
    {"name": "workday", "target": 0, "scheduleExpression": "cron(0 0 8 * * 1-5)", "timeZone": "Asia/Shanghai"},
    {"name": "night", "target": 0, "scheduleExpression": "cron(0 0 20 * * *)", "timeZone": "Asia/Shanghai"},
]
tracking = [{"name": "target-tracking", "metricType": "ProvisionedConcurrencyUtilization",
             "metricTarget": 0.6, "minCapacity": 0, "maxCapacity": 2}]
put = c.put_provision_config("zipfn", m.PutProvisionConfigRequest().from_map(
    {"body": {"target": 0, "scheduledActions": actions, "targetTrackingPolicies": tracking}}))
got = c.get_provision_config("zipfn", m.GetProvisionConfigRequest()).body
for body in (put.body, got):
    assert [a.to_map() for a in body.scheduled_actions] == actions, body.to_map()
    assert [t.to_map() for t in body.target_tracking_policies] == tracking, body.to_map()
# The function's spec says the same, and an update of the function keeps it.
c.update_function("zipfn", m.UpdateFunctionRequest().from_map({"body": {"description": "kept"}}))
got = c.get_provision_config("zipfn", m.GetProvisionConfigRequest()).body
assert [a.to_map() for a in got.scheduled_actions] == actions, got.to_map()
# Refused clearly: an at() expression.
try:
    c.put_provision_config("zipfn", m.PutProvisionConfigRequest().from_map(
        {"body": {"target": 0, "scheduledActions": [{"name": "once", "target": 1,
                                                      "scheduleExpression": "at(2026-12-01T00:00:00Z)"}]}}))
    raise AssertionError("an at() schedule was accepted")
except Exception as e:  # the SDK raises TeaException
    assert "only cron" in str(e), e
c.delete_provision_config("zipfn", m.DeleteProvisionConfigRequest())
assert c.get_provision_config("zipfn", m.GetProvisionConfigRequest()).body.scheduled_actions in (None, [])

step("Concurrency config: reserved concurrency = max in flight")
cc = c.put_concurrency_config("zipfn", m.PutConcurrencyConfigRequest().from_map({"body": {"reservedConcurrency": 4}}))
assert cc.body.reserved_concurrency == 4

step("HTTP triggers: authType anonymous opens /function/ to anyone, function needs a gpufn token")


def plain_post(path, body):
    conn = http.client.HTTPConnection(ENDPOINT, timeout=30)
    conn.request("POST", path, body, {"content-type": "text/plain"})
    r = conn.getresponse()
    return r.status, r.read()


assert plain_post("/function/zipfn/invoke", b"x")[0] == 401
t = c.create_trigger("zipfn", m.CreateTriggerRequest(body=m.CreateTriggerInput(
    trigger_name="web", trigger_type="http",
    trigger_config=json.dumps({"authType": "anonymous", "methods": ["GET", "POST"]}))))
assert t.body.trigger_name == "web" and t.body.http_trigger.url_internet.endswith("/function/zipfn"), t.body.to_map()
assert plain_post("/function/zipfn/invoke", b"x") == (200, b"zipfn:x:hi")
assert [x.trigger_name for x in c.list_triggers("zipfn", m.ListTriggersRequest()).body.triggers] == ["web"]
# The function stays public across an update of the function itself.
c.update_function("zipfn", m.UpdateFunctionRequest().from_map({"body": {"timeout": 60}}))
assert plain_post("/function/zipfn/invoke", b"y")[0] == 200
c.update_trigger("zipfn", "web", m.UpdateTriggerRequest(body=m.UpdateTriggerInput(
    trigger_config=json.dumps({"authType": "function"}))))
assert plain_post("/function/zipfn/invoke", b"x")[0] == 401
expect_error(lambda: c.create_trigger("zipfn", m.CreateTriggerRequest(body=m.CreateTriggerInput(
    trigger_name="jwt", trigger_type="http", trigger_config=json.dumps({"authType": "jwt"})))),
    "InvalidArgument", 400)
c.delete_trigger("zipfn", "web")
assert c.list_triggers("zipfn", m.ListTriggersRequest()).body.triggers == []

step("Concurrent changes of one function keep each other's fields (each holds the function's lock)")
import threading
for rnd in range(3):
    changes = [
        lambda: client().put_provision_config("zipfn", m.PutProvisionConfigRequest().from_map({"body": {"target": 1}})),
        lambda: client().put_concurrency_config("zipfn", m.PutConcurrencyConfigRequest().from_map({"body": {"reservedConcurrency": 6 + rnd}})),
        lambda: client().update_function("zipfn", m.UpdateFunctionRequest().from_map({"body": {"timeout": 61 + rnd}})),
        lambda: client().create_trigger("zipfn", m.CreateTriggerRequest(body=m.CreateTriggerInput(
            trigger_name="race%d" % rnd, trigger_type="http", trigger_config=json.dumps({"authType": "anonymous"})))),
    ]
    errors = []
    def run(f):
        try:
            f()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(f,)) for f in changes]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert c.get_provision_config("zipfn", m.GetProvisionConfigRequest()).body.target == 1
    assert c.get_concurrency_config("zipfn").body.reserved_concurrency == 6 + rnd
    assert c.get_function("zipfn", m.GetFunctionRequest()).body.timeout == 61 + rnd
    assert plain_post("/function/zipfn/invoke", b"r")[0] == 200, "the anonymous trigger's auth was lost"
    c.delete_trigger("zipfn", "race%d" % rnd)
    c.delete_provision_config("zipfn", m.DeleteProvisionConfigRequest())
    assert plain_post("/function/zipfn/invoke", b"x")[0] == 401

step("An invoker key (--access-key ID:SECRET:invoker) invokes but changes nothing")
inv = client("LTAIinvoker", "inv0ker")
r = inv.invoke_function("zipfn", m.InvokeFunctionRequest(body=io.BytesIO(b"as-invoker")))
assert r.body.read() == b"zipfn:as-invoker:hi"
expect_error(lambda: inv.delete_function("zipfn"), "AccessDenied", 403)
expect_error(lambda: inv.create_function(m.CreateFunctionRequest().from_map({"body": {
    "functionName": "evil", "runtime": "custom.debian10", "code": {"zipFile": zip_b64()},
    "customRuntimeConfig": {"command": ["python3", "app.py"]}, "gpuConfig": {"gpuMemorySize": 1024}}})),
    "AccessDenied", 403)
assert c.get_function("zipfn", m.GetFunctionRequest()).body.function_name == "zipfn"

step("Signature failures: wrong secret, unknown key")
expect_error(lambda: client(secret="wrong").get_function("zipfn", m.GetFunctionRequest()), "SignatureNotMatch", 403)
expect_error(lambda: client(ak="NOBODY").get_function("zipfn", m.GetFunctionRequest()), "InvalidAccessKeyId", 403)


def raw(method, path, body, date=None, nonce="n-" + str(time.time()), tamper_body=None):
    """Sends a request signed with the SDK's own signer; returns (status, code)."""
    class R:
        pass
    req = R()
    req.method, req.pathname, req.query = method, path, {}
    digest = hashlib.sha256(body).hexdigest()
    req.headers = {"host": ENDPOINT, "x-acs-version": "2023-03-30", "x-acs-action": "CreateFunction",
                   "x-acs-date": date or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "x-acs-signature-nonce": nonce, "x-acs-content-sha256": digest,
                   "content-type": "application/json; charset=utf-8"}
    req.headers["Authorization"] = SignUtils.get_authorization(req, "ACS3-HMAC-SHA256", digest, AK, SECRET)
    conn = http.client.HTTPConnection(ENDPOINT)
    conn.request(method, path, tamper_body if tamper_body is not None else body, req.headers)
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, json.loads(data).get("Code") if data else None


def create_body(name):
    return json.dumps({"functionName": name, "runtime": "custom.debian10", "code": {"zipFile": zip_b64()},
                       "customRuntimeConfig": {"command": ["python3", "app.py"]}, "gpuConfig": gpu}).encode()


step("Signature failures: replayed nonce, stale date, body not matching its hash; nothing changed")
status, code = raw("POST", "/2023-03-30/functions", create_body("replayed"), nonce="fixed-nonce")
assert status == 200, (status, code)
status, code = raw("POST", "/2023-03-30/functions", create_body("replayed2"), nonce="fixed-nonce")
assert (status, code) == (403, "SignatureNotMatch") or (status, code) == (403, "SignatureNonceUsed"), (status, code)
# The same bytes again (a true replay): refused for the nonce.
body = create_body("replay3")
first = raw("POST", "/2023-03-30/functions", body, nonce="replay-me")
again = raw("POST", "/2023-03-30/functions", body, nonce="replay-me")
assert first[0] == 200 and again == (403, "SignatureNonceUsed"), (first, again)
stale = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
assert raw("POST", "/2023-03-30/functions", create_body("stale"), date=stale) == (403, "RequestTimeTooSkewed")
assert raw("POST", "/2023-03-30/functions", create_body("tampered"),
           tamper_body=create_body("tampered-other")) == (403, "SignatureNotMatch")
names = {f.function_name for f in c.list_functions(m.ListFunctionsRequest(limit=100)).body.functions}
assert names == {"zipfn", "ctrfn", "replayed", "replay3"}, names

step("A code zip that unpacks past diskSize is refused, and leaves nothing behind")
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("app.py", "print(1)\n")
    z.writestr("zeros.bin", b"\0" * (70 << 20))
bomb = base64.b64encode(buf.getvalue()).decode()
assert len(bomb) < 1 << 20, len(bomb)
expect_error(lambda: c.create_function(m.CreateFunctionRequest().from_map({"body": {
    "functionName": "bomb", "runtime": "custom.debian10", "diskSize": 64, "code": {"zipFile": bomb},
    "customRuntimeConfig": {"command": ["python3", "app.py"]}, "gpuConfig": gpu}})),
    "InvalidArgument", 400)

step("DeleteFunction")
for name in ("zipfn", "ctrfn", "replayed", "replay3"):
    c.delete_function(name)
expect_error(lambda: c.get_function("zipfn", m.GetFunctionRequest()), "FunctionNotFound", 404)
print("FC SDK test passed")
