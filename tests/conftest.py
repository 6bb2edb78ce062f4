"""Shared fixtures: one outputs/ folder per session, the global state restored after each test, a
real-shaped Llama layer, `chattr +i` on a path. Plain helpers (tiny configs, probes, tiny models) are in tests/helpers/.

Every test starts from the same global state and leaves it as it found it (`restore_global_state`):
torch's thread count and RNG, Python's and numpy's RNG, the environment. The Hugging Face cache the
tests see is an empty folder of the session's, so no test depends on what the user's cache holds.
Hypothesis is derandomised (the same examples on every run) with no deadline (a loaded 2-core
machine is not a failure). Each test gets a tag (`LSP_TEST_TAG`, a digest of its node id) that
tests/helpers/tiny_run.py's `tiny_overrides` puts on every run and `run_of_this_test` looks up.
"""
from __future__ import annotations

import atexit
import os
import random
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Before anything imports huggingface_hub (it reads these once): an empty cache of the session's own.
_HF_HOME = tempfile.mkdtemp(prefix="lsp-test-hf-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
for _key, _sub in (("HF_HOME", ""), ("HF_HUB_CACHE", "hub"), ("HF_XET_CACHE", "xet"), ("TRANSFORMERS_CACHE", "hub")):
    os.environ[_key] = os.path.join(_HF_HOME, _sub)

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import settings

settings.register_profile("lsp", derandomize=True, deadline=None, database=None, print_blob=True)
settings.load_profile("lsp")


@pytest.fixture(scope="session")
def shared_outputs(tmp_path_factory):
    """One outputs/ folder for the session, so the tiny toy world is built once."""
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(autouse=True)
def restore_global_state(request):
    """The test's tag for its runs; torch threads, RNGs and the environment restored after it."""
    threads, environ = torch.get_num_threads(), dict(os.environ)
    os.environ["LSP_TEST_TAG"] = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16]
    rng = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update(environ)
    random.setstate(rng[0]), np.random.set_state(rng[1]), torch.random.set_rng_state(rng[2])


@pytest.fixture(scope="module")
def real_shaped(tmp_path_factory):
    """One Llama decoder layer of width 512 (q_proj 512 x 512; RMSNorm weights 1.0), saved in bfloat16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=512, intermediate_size=1024, num_hidden_layers=1,
                         num_attention_heads=8, num_key_value_heads=4, initializer_range=0.02,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("real_shaped")
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    return str(path)


@pytest.fixture
def immutable():
    """A real fault: `chattr +i` on a path (nothing in it can be created, changed or removed, even by
    root), undone after the test; `set_immutable(path, False)` undoes it early. Skips the test
    where chattr cannot (not root, or a filesystem without the flag)."""
    import subprocess

    done: set = set()

    def set_immutable(path, on: bool = True) -> None:
        flag = "+i" if on else "-i"
        if os.geteuid() != 0 or subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i needs root and a filesystem that supports it")
        (done.add if on else done.discard)(str(path))

    yield set_immutable
    for path in done:
        subprocess.run(["chattr", "-i", path], check=False)
