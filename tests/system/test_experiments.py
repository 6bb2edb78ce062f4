"""Every checked-in experiment runs: a multirun over `experiment=glob(*)` with tiny limits (one MLflow
parent, one child per experiment), and the paper-scale configs on tiny stand-ins of the same families."""
import json
import subprocess
import sys

import mlflow
import pytest
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from lsp_exp.run.config import PROJECT_ROOT
from lsp_exp.tasks.arith.tokenizer import build_tokenizer
from lsp_exp.cli.train import train

import torch

from tests.helpers.tiny_run import compose_config, run_of_this_test, runs_of_this_test, tiny_overrides

TOY_EXPERIMENTS = sorted(str(p.relative_to(PROJECT_ROOT / "conf" / "experiment").with_suffix(""))
                         for p in (PROJECT_ROOT / "conf" / "experiment").rglob("*.yaml")
                         if not p.is_relative_to(PROJECT_ROOT / "conf" / "experiment" / "paper_llama3b")
                         and not p.is_relative_to(PROJECT_ROOT / "conf" / "experiment" / "lab"))
# The self-play lab's arms (conf/experiment/lab) combine options other tests run; tests/system/test_lab_arms.py
# composes each of them, and they stay out of this sweep to keep `make test` short.
TINY_LIMITS = ["trainer.max_steps=1", "eval.every_n_steps=0", "eval.samples=0", "eval.max_problems=8",
               "eval.judge_pairs=0", "eval.sample_table_every=1"]


def test_every_toy_experiment_runs_in_one_sweep_with_a_parent_run(shared_outputs, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [o for o in tiny_overrides(shared_outputs, *TINY_LIMITS) if not o.startswith("logger.tracking_uri")]
    # Hydra's glob(*) does not descend into conf/experiment/<folder>/, so the sweep lists every file found.
    out = subprocess.run([sys.executable, "-m", "lsp_exp.cli.train", "-m", "experiment=" + ",".join(TOY_EXPERIMENTS),
                          *overrides, f"logger.tracking_uri={uri}", f"hydra.sweep.dir={tmp_path}/sweep"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("kind") == "sweep"}
    assert sorted(r.data.tags.get("experiment") for r in children) == [
        e if not e.startswith("toy_table/") else "toy_table" for e in TOY_EXPERIMENTS]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == set(parents)  # one parent per MLflow experiment
    chained = [r for r in children if r.data.tags.get("arm") in ("lsp_rl", "lsp_zero_rl")]
    assert len(chained) == 2 and all(r.data.tags["init_from"].startswith("filter:") for r in chained)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """A tiny Llama policy and a tiny Llama reward model (one scalar head), saved like downloaded models."""
    root = tmp_path_factory.mktemp("stand_ins")
    tokenizer = build_tokenizer()
    tokenizer.model_max_length = 2048  # a real model's context: the paper's prompts are ~1,400 of these tokens
    arch = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id)
    for name, cls, extra in (("policy", LlamaForCausalLM, {}),
                             ("rm", LlamaForSequenceClassification, {"num_labels": 1})):
        cls(LlamaConfig(**arch, **extra)).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    (root / "alpaca.json").write_text(json.dumps([{"instruction": "Name a colour.", "input": ""},
                                                  {"instruction": "Add.", "input": "2 and 3"}]))
    return root


def paper_config(outputs, stand_ins, store, arm, *extra):
    return compose_config("train", tiny_overrides(outputs, *TINY_LIMITS, arith=False) + [
        f"experiment=paper_llama3b/{arm}", f"model.path={stand_ins / 'policy'}", f"reward.path={stand_ins / 'rm'}",
        f"game.prompts_path={stand_ins / 'alpaca.json'}", "trainer=cpu", "trainer.max_steps=1",
        "model.dtype=float32", "reward.dtype=float32", "game.max_query_tokens=6", "game.max_answer_tokens=6",
        "game.judge.max_new_tokens=6", "eval.judge_pairs=0", f"logger.tracking_uri={store}", *extra])


@pytest.mark.parametrize("arm", ["lsp", "lsp_zero", "grpo", "lsp_rl"])
def test_paper_configs_compose_and_run_on_tiny_stand_ins(shared_outputs, stand_ins, arm, tmp_path, monkeypatch):
    store = f"sqlite:///{tmp_path}/mlflow.db"  # this test's own store: lsp_rl finds the lsp run it made itself
    cfg = paper_config(shared_outputs, stand_ins, store, arm)
    paper = compose_config("train", [f"experiment=paper_llama3b/{arm}"])  # what Appendix C sets (docs/method.md §10)
    assert paper.model.name == "llama3_2_3b_instruct" and paper.reward.name == "skywork_v2_3b"
    assert paper.game.n_queries == 8 and paper.kl.beta == 0.05 and paper.model.lora.enabled
    assert paper.optim.lr == (1e-6 if arm in ("grpo", "lsp_rl") else 3e-6) == cfg.optim.lr
    assert paper.game.self_reward == (arm == "lsp") and paper.game.prompt == "paper"
    assert paper.trainer.accelerator == "gpu" and paper.trainer.precision == "bf16-mixed"
    if arm == "lsp_rl":  # the LSP stage first, at a learning rate that moves its LoRA adapter visibly
        train(paper_config(shared_outputs, stand_ins, store, "lsp", "optim.lr=1e-2"))
        started = capture_start_weights(monkeypatch)
    train(cfg)  # lsp_rl: starts from the LoRA adapter the lsp run logged (merged into the base)
    run = run_of_this_test(store, "paper-llama3b", f"tags.arm = '{ {'grpo': 'rl'}.get(arm, arm)}'")
    assert run.info.status == "FINISHED"
    if arm == "lsp_rl":  # its start = the base with the lsp run's adapter merged, computed here with peft
        from peft import PeftModel

        (lsp,) = runs_of_this_test(store, "paper-llama3b", "tags.arm = 'lsp'")
        assert run.data.tags["init_from"].startswith("filter:") and lsp.info.status == "FINISHED"
        base = LlamaForCausalLM.from_pretrained(stand_ins / "policy").eval()
        ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
        with torch.no_grad():
            base_logits = base(ids).logits
            adapter = shared_outputs / "init_from" / lsp.info.run_id / "model"
            merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()(ids).logits
        assert (merged - base_logits).abs().max() > 1e-4, "the lsp stage's adapter did not move"
        assert torch.allclose(started(ids), merged, atol=1e-5)


def capture_start_weights(monkeypatch):
    """The policy the self-play module is given, as a function of input ids (a frozen copy)."""
    import copy

    from lsp_exp.run.self_play import SelfPlayModule

    held = {}
    real = SelfPlayModule.__init__

    def init(self, cfg, policy, *args, **kwargs):
        held["policy"] = copy.deepcopy(policy).eval()
        real(self, cfg, policy, *args, **kwargs)

    monkeypatch.setattr(SelfPlayModule, "__init__", init)

    def logits(ids):
        with torch.no_grad():
            return held["policy"](ids).logits
    return logits
