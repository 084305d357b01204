"""Drives headless Chromium over the DevTools protocol (--remote-debugging-pipe) in real
time: opens URL at WIDTHxHEIGHT, samples EXPRESSION every half second until the page's
text contains UNTIL (or SECONDS pass), then prints one JSON object: the samples, the
console messages and exceptions, log entries (failed loads, CSP), the final DOM, and
writes a PNG screenshot when asked.

usage: cdp.py URL SECONDS EXPRESSION UNTIL SCREENSHOT_OR_DASH WIDTH HEIGHT

With CDP_PROGRESS set to a file, each sample's value is also appended to it as a JSON
line the moment it is taken, for a caller that acts on what the page shows.
"""
import base64
import json
import os
import subprocess
import sys
import tempfile
import time

url, seconds, expression, until, shot, width, height = sys.argv[1:8]
seconds, width, height = float(seconds), int(width), int(height)
progress = os.environ.get("CDP_PROGRESS")

to_chrome_r, to_chrome_w = os.pipe()
from_chrome_r, from_chrome_w = os.pipe()


def fds():
    # Chromium reads commands on fd 3 and writes replies on fd 4.
    r, w = os.dup(to_chrome_r), os.dup(from_chrome_w)
    os.dup2(r, 3, inheritable=True)
    os.dup2(w, 4, inheritable=True)


profile = tempfile.mkdtemp(prefix="weir-chromium-")
chrome = subprocess.Popen(
    ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
     "--no-first-run", "--no-default-browser-check", "--disable-extensions",
     "--hide-scrollbars", "--remote-debugging-pipe", f"--user-data-dir={profile}"],
    preexec_fn=fds, pass_fds=(), stdout=subprocess.DEVNULL, stderr=open(os.environ.get("CDP_LOG", os.devnull), "w"),
    close_fds=False)
os.close(to_chrome_r)
os.close(from_chrome_w)
out = os.fdopen(to_chrome_w, "wb", buffering=0)
inp = os.fdopen(from_chrome_r, "rb", buffering=0)
buffered = b""
next_id = 0
events = []


def send(method, params=None, session=None):
    global next_id
    next_id += 1
    msg = {"id": next_id, "method": method, "params": params or {}}
    if session:
        msg["sessionId"] = session
    out.write(json.dumps(msg).encode() + b"\0")
    return next_id


def receive():
    global buffered
    while b"\0" not in buffered:
        chunk = inp.read(65536)
        if not chunk:
            raise SystemExit("chromium closed the pipe")
        buffered += chunk
    msg, buffered = buffered.split(b"\0", 1)
    return json.loads(msg)


def call(method, params=None, session=None):
    want = send(method, params, session)
    while True:
        msg = receive()
        if msg.get("id") == want:
            if "error" in msg:
                raise SystemExit(f"{method}: {msg['error']}")
            return msg.get("result", {})
        if "method" in msg:
            events.append(msg)


try:
    target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for m in ("Runtime.enable", "Page.enable", "Log.enable"):
        call(m, session=session)
    call("Emulation.setDeviceMetricsOverride",
         {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
    call("Page.navigate", {"url": url}, session)
    samples = []
    start = time.time()
    while time.time() - start < seconds:
        time.sleep(0.5)
        got = call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        value = got.get("result", {}).get("value")
        samples.append({"t": round(time.time() - start, 2), "value": value})
        if progress:
            with open(progress, "a") as f:
                f.write(json.dumps(value) + "\n")
        text = call("Runtime.evaluate", {"expression": "document.body ? document.body.innerText : ''",
                                          "returnByValue": True}, session)
        if until and until in (text.get("result", {}).get("value") or ""):
            break
    dom = call("Runtime.evaluate", {"expression": "document.documentElement.outerHTML",
                                    "returnByValue": True}, session)["result"]["value"]
    if shot != "-":
        png = call("Page.captureScreenshot", {"format": "png"}, session)["data"]
        with open(shot, "wb") as f:
            f.write(base64.b64decode(png))
    console, errors = [], []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            console.append({"type": p.get("type"), "text": text})
        elif e["method"] == "Runtime.exceptionThrown":
            errors.append(p.get("exceptionDetails", {}).get("text", "exception"))
        elif e["method"] == "Log.entryAdded":
            entry = p.get("entry", {})
            if entry.get("level") in ("error", "warning"):
                errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
    print(json.dumps({"samples": samples, "console": console, "errors": errors, "dom": dom}))
finally:
    try:
        send("Browser.close")
    except Exception:
        pass
    try:
        chrome.wait(timeout=10)
    except subprocess.TimeoutExpired:
        chrome.kill()
        chrome.wait()
    subprocess.run(["rm", "-rf", profile])
