"""Screenshots of the MLflow UI in a real browser (headless Chromium, a fresh profile), as a new user
sees it: the runs table of a sweep (collapsed, then its parent expanded), a run's charts, and its
sample table. Nothing but the standard library: it drives Chromium over the DevTools protocol.

    .venv/bin/lsp-train -m game=lsp_zero,grpo_data seed=0,1 trainer.max_steps=3 paths.outputs=/tmp/sweep
    .venv/bin/python experiments/ui_screenshots/shoot.py sqlite:////tmp/sweep/mlflow.db experiments/ui_screenshots/shots

Needs `chromium` (Debian: apt-get install chromium); run it with the project's `.venv` Python (MLflow's UI server).
It opens exactly the links lsp-train prints (`?workflowType=machine_learning`).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


class DevTools:
    """A minimal Chrome DevTools Protocol client over one WebSocket (RFC 6455, client frames masked)."""

    def __init__(self, ws_url: str):
        host_port, path = ws_url.removeprefix("ws://").split("/", 1)
        host, port = host_port.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(4096)
        if b" 101 " not in response.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"DevTools handshake failed: {response[:200]!r}")
        self.buffer = response.split(b"\r\n\r\n", 1)[1]
        self.next_id = 0

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("DevTools connection closed")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _frame(self) -> tuple[bool, int, bytes]:
        """(FIN, opcode, payload) of the next frame (server frames are not masked)."""
        b0, b1 = self._read(2)
        length = b1 & 0x7F
        if length == 126:
            length = struct.unpack(">H", self._read(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", self._read(8))[0]
        return bool(b0 & 0x80), b0 & 0x0F, self._read(length)

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        payload = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        header = bytes([0x81])
        n = len(payload)
        header += bytes([0x80 | n]) if n < 126 else (bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536
                                                     else bytes([0x80 | 127]) + struct.pack(">Q", n))
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        while True:
            message = self._next()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def _next(self) -> dict:
        """The next message (an answer or an event), its continuation frames joined; pings skipped."""
        parts = []
        while True:
            fin, opcode, data = self._frame()
            if opcode in (0x9, 0xA):
                continue
            parts.append(data)
            if fin:
                return json.loads(b"".join(parts))

    # ---- page helpers ----------------------------------------------------------------------------
    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def goto(self, url: str, wait_for: str, timeout: float = 60) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for(wait_for, timeout)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.evaluate(f"document.body && document.body.innerText.includes({json.dumps(text)})"):
                time.sleep(1.5)  # let charts and tables finish drawing
                return
            time.sleep(0.5)
        page = self.evaluate("document.body.innerText")[:500]
        raise TimeoutError(f"{text!r} did not appear; the page says: {page!r}")

    def click_text(self, text: str, selector: str = "button, a, [role=button], span, div") -> bool:
        """Click the innermost visible element of `selector` whose text is exactly `text`."""
        return bool(self.evaluate(f"""(() => {{
            const all = [...document.querySelectorAll({json.dumps(selector)})]
              .filter(e => e.innerText && e.innerText.trim() === {json.dumps(text)} && e.offsetParent !== null);
            const inner = all.filter(e => !all.some(o => o !== e && e.contains(o)));
            if (!inner.length) return false;
            inner[0].click(); return true; }})()"""))

    def click(self, selector: str) -> bool:
        """Click the first visible element that matches a CSS selector."""
        return bool(self.evaluate(f"""(() => {{ const e = [...document.querySelectorAll({json.dumps(selector)})]
            .find(e => e.offsetParent !== null); if (!e) return false; e.click(); return true; }})()"""))

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        print(f"wrote {path}")
        return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


def shoot(store: str, out: Path) -> list[Path]:
    import mlflow

    from lsp_exp.run.console import run_link

    out.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("lsp-exp")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parent = next(r for r in runs if r.data.tags.get("kind") == "sweep")
    child = next(r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
                 and r.data.tags.get("game") != "grpo_data")
    ui_port, cdp_port = free_port(), free_port()
    base = f"http://127.0.0.1:{ui_port}"
    ui = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", store,
                           "--host", "127.0.0.1", "--port", str(ui_port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    profile = tempfile.mkdtemp(prefix="lsp-chromium-")  # a fresh browser profile: nothing chosen before
    browser = subprocess.Popen([shutil.which("chromium") or "chromium", "--headless=new", "--no-sandbox",
                                "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
                                "--window-size=1600,1000", f"--remote-debugging-port={cdp_port}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shots = []
    try:
        wait_http(f"{base}/health")
        wait_http(f"http://127.0.0.1:{cdp_port}/json/version")
        page = next(t for t in json.loads(urllib.request.urlopen(f"http://127.0.0.1:{cdp_port}/json/list").read())
                    if t["type"] == "page")
        tab = DevTools(page["webSocketDebuggerUrl"])
        tab.send("Page.enable")
        link = run_link(base, experiment.experiment_id)
        tab.goto(link, "matching runs")                                # the experiment's runs, as printed
        tab.click('button[data-component-id="mlflow.assistant.chat_panel.close"]')  # the assistant's side panel
        time.sleep(1)
        shots.append(tab.screenshot(out / "1_runs_table_collapsed.png"))
        tab.click('button[data-component-id*="runnamecellrenderer"]')  # the + left of the sweep's parent
        tab.wait_for(child.info.run_name)
        shots.append(tab.screenshot(out / "2_runs_table_expanded.png"))
        tab.click_text("Columns")                                      # the column chooser
        time.sleep(1.5)
        shots.append(tab.screenshot(out / "3_columns_menu.png"))
        tab.evaluate("""(() => { const e = [...document.querySelectorAll('[role=menuitemcheckbox], label, span, div')]
            .filter(e => e.innerText && e.innerText.trim() === 'eval/accuracy');
            if (e.length) e[e.length - 1].click(); return e.length; })()""")
        time.sleep(1)
        tab.send("Input.dispatchKeyEvent", type="keyDown", key="Escape", code="Escape", windowsVirtualKeyCode=27)
        time.sleep(1)
        shots.append(tab.screenshot(out / "4_runs_table_with_accuracy.png"))
        tab.evaluate("document.querySelector('input[type=radio][value=CHART]').closest('label').click()")  # chart view
        time.sleep(3)
        shots.append(tab.screenshot(out / "5_sweep_charts.png"))
        run_url = run_link(base, experiment.experiment_id, child.info.run_id)
        tab.goto(run_url, child.info.run_name)                         # the run, as lsp-train prints it
        shots.append(tab.screenshot(out / "6_run_overview.png"))
        tab.goto(run_url.replace("?", "/model-metrics?"), "eval/accuracy")   # its "Model metrics" tab
        shots.append(tab.screenshot(out / "7_run_charts.png"))
        table = sorted(a.path for a in client.list_artifacts(child.info.run_id, "samples"))[-1]
        tab.goto(run_url.replace("?", f"/artifacts/{table}?"), "decoded")    # Artifacts > samples > the last table
        shots.append(tab.screenshot(out / "8_sample_table.png"))
        models = run_link(base, experiment.experiment_id).replace("/runs?", "/models?")
        tab.goto(models, "policy")                                           # the experiment's Models tab
        shots.append(tab.screenshot(out / "9_models.png"))
    finally:
        browser.terminate()
        ui.terminate()
        browser.wait(timeout=30)
        ui.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
    return shots


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", help="the tracking store of a sweep, e.g. sqlite:////tmp/sweep/mlflow.db")
    parser.add_argument("out", type=Path, help="a folder for the PNGs")
    args = parser.parse_args()
    shoot(args.store, args.out)
