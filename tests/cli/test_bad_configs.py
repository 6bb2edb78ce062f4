"""Bad configurations through the real `lsp-train` entry: each exits non-zero with a clear message
that names the offending key or value, and no Python traceback; none builds anything first.

The cases run in one batch (tests/helpers/cli_batch.py: the entry's imports paid once, one forked child
per case, in parallel); one case also runs through the installed `lsp-train` script itself, to show
the batch sees what a user sees."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.network import closed_port
from tests.helpers.tiny_run import tiny_overrides

TESTS = Path(__file__).resolve().parents[1]
CLOSED_PORT = "<closed>"  # replaced by a loopback port nothing listens on
EMPTY = "<empty>"          # replaced by an empty file

# (overrides, what the message must name). Hydra's composition errors are its own short message
# (plus its HYDRA_FULL_ERROR hint); everything else is one line `error: <key>=<value>: <why>`.
BAD = [
    ("game=nope", "Could not find 'game/nope'"),                     # unknown group option
    ("algorithm=nope", "Could not find 'algorithm/nope'"),           # unknown algorithm name
    ("game.n_queries=abc", "game.n_queries=abc"),                    # wrong type
    ("seed=1.5", "seed=1.5"),
    ("game.nope=1", "game.nope"),                                    # unknown key
    ("game.n_queries=[", "'game.n_queries=['"),                      # unparseable override
    ("nokey", "'nokey'"),
    ("game.n_queries=0", "game.n_queries=0: N must be at least 1"),  # N < 1
    ("trainer.micro_batch_size=0", "trainer.micro_batch_size=0: must be at least 1 row"),
    ("trainer.strategy=deepspeed", "trainer.strategy=deepspeed: DeepSpeed owns the backward"),
    ("game.group_size=1", "game.group_size=1: G must be at least 2"),  # G < 2 with a group baseline
    ("kl.beta=-0.1", "kl.beta=-0.1: must be >= 0"),                  # negative beta
    ("optim.lr=0", "optim.lr=0.0: must be > 0"),                     # lr <= 0
    ("optim.betas=[0.9]", "optim.betas="),
    ("model=llama3_2_3b_instruct", "model.path='meta-llama/Llama-3.2-3B-Instruct' is not in the Hugging Face cache"),
    ("model.path=/nonexistent/model", "model.path='/nonexistent/model': directory does not exist"),
    ("algorithm.advantage=nope", "algorithm.advantage='nope': unknown; available:"),
    ("trainer.max_steps=0", "trainer.max_steps=0: must be at least 1"),
    ("trainer.precision=64x", "trainer.precision='64x': unknown"),
    ("trainer.precision=16-mixed", "trainer.precision='16-mixed': float16 autocast needs a gradient scaler"),
    ("trainer.precision=bf16-true", "trainer.precision='bf16-true': casts the float32 master weights"),
    ("trainer.max_consecutive_nonfinite=0", "trainer.max_consecutive_nonfinite=0"),
    ("reward=reward_model reward.path=/nonexistent/rm", "reward.path='/nonexistent/rm': directory does not exist"),
    ("reward._target_=nowhere.Oracle", "reward._target_='nowhere.Oracle'"),
    ("kl.estimator=k9", "kl.estimator='k9': unknown; available: k1, k2, k3"),
    ("eval.samples=-1", "eval.samples=-1: must be >= 0"),
    ("task.heldout_path=/nonexistent/heldout.jsonl", "task.heldout_path='/nonexistent/heldout.jsonl': no such file"),
    ("game=grpo_data game.prompts_path=/nonexistent/p.jsonl", "game.prompts_path='/nonexistent/p.jsonl': no such file"),
    ("logger.tracking_uri=ftp://example.org/mlflow",
     "logger.tracking_uri='ftp://example.org/mlflow': unsupported scheme"),
    (f"logger.tracking_uri=http://127.0.0.1:{CLOSED_PORT}", "tracking server unreachable"),
    ("optim.lr=inf", "optim.lr=inf: must be a finite number"),             # would destroy the weights
    ("kl.beta=nan", "kl.beta=nan: must be a finite number"),
    ("seed=-1", "seed=-1: must be in [0, 2**32 - 1]"),
    ("seed=4294967296", "seed=4294967296: must be in [0, 2**32 - 1]"),
    ("trainer.num_threads=-1", "trainer.num_threads=-1: must be at least 1"),
    ("trainer.devices=0", "trainer.devices=0: must be at least 1"),
    ("trainer=gpu", "no CUDA device is visible"),
    (f"model.path={TESTS}", "not a model folder (no config.json in it)"),
    (f"trainer.checkpoint_dir={TESTS / 'conftest.py'}", "is a file, not a folder"),
    (f"trainer.checkpoint_dir={TESTS / 'conftest.py' / 'ck'}", "is under a file"),   # below a file: root can't either
    (f"task.heldout_path={TESTS.parent / 'README.md'}", "README.md line 1: not a problem row"),
    ("task.heldout_path=<empty>", "empty.jsonl: no problems in it"),
    ("resume=0123456789abcdef0123456789abcdef", "no checkpoint of that MLflow run"),   # resume failures
    ("resume=<emptydir>", "no step_*.ckpt in that directory"),
    ("resume=<empty>", "cannot be loaded safely"),                                  # an empty .ckpt-like file
    (f"resume={TESTS / 'conftest.py'}", "cannot be loaded safely"),                  # a text file
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run every case in one batch; also run the first case through the installed script."""
    outputs = tmp_path_factory.mktemp("bad_configs")
    port = str(closed_port())
    (outputs / "empty.jsonl").write_text("")
    (outputs / "emptydir").mkdir(exist_ok=True)
    cases = [{"argv": tiny_overrides(outputs, *args.replace(CLOSED_PORT, port)
                                      .replace(EMPTY, str(outputs / "empty.jsonl"))
                                      .replace("<emptydir>", str(outputs / "emptydir"))
                                      .split()),
              "env": {"HF_HUB_OFFLINE": "1"}} for args, _ in BAD]
    (outputs / "cases.json").write_text(json.dumps(cases))
    script = Path(sys.executable).parent / "lsp-train"
    real = subprocess.Popen([str(script), *cases[0]["argv"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) if script.exists() else None
    batch = subprocess.run([sys.executable, str(TESTS / "helpers" / "cli_batch.py"), str(outputs / "cases.json"),
                            str(outputs / "results.json")], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert batch.returncode == 0, batch.stderr[-3000:]
    out = dict(zip((args for args, _ in BAD), json.loads((outputs / "results.json").read_text()), strict=True))
    if real is not None:
        stdout, stderr = real.communicate(timeout=300)
        out["<installed script>"] = {"rc": real.returncode, "stdout": stdout, "stderr": stderr}
    out["<outputs>"] = outputs
    return out


@pytest.mark.parametrize("args, named", BAD, ids=[args for args, _ in BAD])
def test_bad_config_fails_clearly(results, args, named):
    if args == "trainer=gpu" and __import__("torch").cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    res = results[args]
    assert res["rc"] != 0, res
    assert "Traceback" not in res["stderr"], res["stderr"]
    assert named in res["stderr"], res["stderr"]
    lines = [line for line in res["stderr"].splitlines() if line.strip()]
    if lines[0].startswith("error: "):  # ours: exactly one line
        assert len(lines) == 1, res["stderr"]
    else:  # Hydra's: its message, then the pointer to HYDRA_FULL_ERROR, no stack
        assert "HYDRA_FULL_ERROR" in lines[-1], res["stderr"]


def test_nothing_was_built_and_the_installed_script_agrees(results):
    assert not (results["<outputs>"] / "toy_world").exists()  # every case failed before the toy world build
    real, batch = results.get("<installed script>"), results[BAD[0][0]]
    if real is None:
        pytest.skip("no installed lsp-train script next to this Python")
    assert (real["rc"], real["stderr"]) == (batch["rc"], batch["stderr"])
