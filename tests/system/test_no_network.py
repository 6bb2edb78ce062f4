"""Security: no connection leaves the machine during an end-to-end run, MLflow's
telemetry is off and the Hugging Face hub offline by default, and no model text is ever executed."""
from __future__ import annotations

import ast
import ipaddress
import os
import socket
import subprocess
import sys

import pytest

from lsp_exp.run.config import PROJECT_ROOT
from lsp_exp.cli.train import train

from tests.helpers.tiny_run import compose_config, tiny_overrides


def is_loopback(host) -> bool:
    if host in (None, "", "localhost", b"localhost"):
        return True
    host = host.decode() if isinstance(host, bytes) else str(host)
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host.endswith(".localhost")


@pytest.fixture
def no_network(monkeypatch):
    """Every connection and name lookup goes through a check: loopback (gloo, a local tracking
    server) and Unix sockets pass; anything else is refused and recorded (a library that swallows
    the error is still caught by the record)."""
    attempts: list = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock_family, address):
        if sock_family == getattr(socket, "AF_UNIX", None) or is_loopback(address[0]):
            return
        attempts.append(address)
        raise OSError(f"test guard: connection to {address} refused (no network in tests)")

    def connect(self, address):
        check(self.family, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        check(self.family, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not is_loopback(host):
            attempts.append((host, "dns"))
            raise socket.gaierror(f"test guard: name lookup of {host!r} refused (no network in tests)")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


def test_the_guard_refuses_the_outside_and_allows_loopback(no_network):
    with pytest.raises(OSError, match="test guard"), socket.socket() as outside:
        outside.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed anyway
    with pytest.raises(OSError, match="test guard"):
        socket.getaddrinfo("example.org", 443)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        socket.create_connection(server.getsockname(), timeout=1).close()
    assert no_network == [("192.0.2.1", 80), ("example.org", "dns")]
    no_network.clear()


def test_an_end_to_end_run_makes_no_outside_connection(shared_outputs, no_network):
    """The full default game (Challenger, Solver, judge, verifier) with MLflow logging, 2 steps."""
    history = train(compose_config("train", tiny_overrides(shared_outputs, "trainer.max_steps=2", "eval.samples=2")))
    assert sorted(history) == [0, 2]
    assert no_network == []


def test_telemetry_is_off_and_the_hub_offline_without_the_makefile():
    """`lsp-train` run directly, with none of the Makefile's or CI's variables set."""
    scrub = {"MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CI",
             "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS"}
    env = {k: v for k, v in os.environ.items() if k not in scrub}
    code = ("import lsp_exp.cli.train; from mlflow.telemetry.utils import is_telemetry_disabled; "
            "import huggingface_hub.constants as hub; print(is_telemetry_disabled(), hub.HF_HUB_OFFLINE)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["True", "True"], out.stderr[-2000:]


def test_no_code_executes_text():
    """No eval / exec / compile / os.system / shell=True anywhere in the package: model text (and
    config text) is parsed, never run (the verifier uses a whitelisting `ast` walk, tests/tasks/test_verifier.py)."""
    offences = []
    for path in sorted((PROJECT_ROOT / "lsp_exp").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("eval", "exec", "compile", "__import__") and isinstance(func, ast.Name):
                offences.append(f"{path.name}:{node.lineno} {name}()")
            if isinstance(func, ast.Attribute) and name == "system" and getattr(func.value, "id", "") == "os":
                offences.append(f"{path.name}:{node.lineno} os.system()")
            if any(k.arg == "shell" and getattr(k.value, "value", False) is True for k in node.keywords):
                offences.append(f"{path.name}:{node.lineno} shell=True")
    assert offences == []
