"""What the conformance tests share: the temperature, a padded batch with a shared prefix, each
row's log-probs alone (the reference), an architecture with dropout on, and one `lsp-train` step."""
from __future__ import annotations

import torch

from tests.helpers.architectures import BY_NAME, build, config_for
from tests.helpers.tiny_run import compose_config

T = 0.7
# What the start-up check refuses, and the line's words (everything else passes).
REFUSED = {"recurrent_gemma": "the gradient at a left-padded row's pad positions (relative to its real "
                              "positions') and 0 differ by"}


def padded(tok):
    """The tokenizer with a pad token."""
    if tok.pad_token is None:   # as load_tokenizer: Llama-3 pads with its end token
        tok.pad_token = tok.eos_token
    return tok


def batch(model, pad: int):
    """4 rows of 12 tokens: three share their first 8 (prefix sharing runs), one is left-padded by 4."""
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prefix = torch.randint(0, vocab, (8,), generator=g)
    rows = [torch.cat([prefix, torch.randint(0, vocab, (4,), generator=g)]) for _ in range(3)]
    rows.append(torch.randint(0, vocab, (8,), generator=g))
    ids = torch.stack([torch.cat([r.new_full((12 - len(r),), pad), r]) for r in rows])
    mask = torch.stack([torch.cat([r.new_zeros(12 - len(r)), r.new_ones(len(r))]) for r in rows])
    return rows, ids, mask


def alone(model, row):
    """log pi_T(row[t+1] | row[:t+1]) and the entropy of pi_T at each position, from
    log_softmax(model(row).logits / T) (the row alone, no padding)."""
    logp = torch.log_softmax(model(input_ids=row[None]).logits[0, :-1].float() / T, -1)
    return logp.gather(-1, row[1:, None])[:, 0], -(logp.exp() * logp).sum(-1)


def with_dropout(name: str, rate: float = 0.1):
    """The architecture with every dropout rate of its config set to `rate`."""
    config = config_for(BY_NAME[name])
    keys = [k for k, v in config.to_dict().items() if ("dropout" in k or "pdrop" in k) and isinstance(v, float)]
    return build(name, **dict.fromkeys(keys, rate)), keys


# One lsp step of lsp-train, R by a checksum of the text (tests/helpers/parity_reward.py), no MLflow.
STEP = ["task=prompts", "game=lsp", "reward._target_=tests.helpers.parity_reward.ParityReward", "reward.world=null",
        "trainer.max_steps=1", "trainer.num_threads=1", "trainer.enable_progress_bar=false",
        "trainer.checkpoint_every=0", "game.n_queries=2", "game.group_size=2", "game.max_query_tokens=6",
        "game.max_answer_tokens=4", "game.judge.max_new_tokens=4", "game.temperature=0.7", "eval.every_n_steps=0",
        "eval.sample_table_every=0", "eval.judge_pairs=0", "eval.samples=0", "logger=none", "optim.lr=1e-2"]


def one_step(name: str, lora: bool, tmp_path, *extra: str):
    """(the modules of one step of lsp-train on the saved architecture, its checkpoint's directory);
    `extra`: more overrides (the device, the precision)."""
    from lsp_exp.cli.train import train
    from lsp_exp.run.self_play import SelfPlayModule

    arch = BY_NAME[name]
    model, tok = build(name)
    path = tmp_path / name
    model.save_pretrained(path)
    tok.save_pretrained(path)
    model.generation_config.save_pretrained(path)
    cfg = compose_config("train", [*STEP, f"model.path={path}", f"model.name={name}", f"model.lora.enabled={lora}",
                                   f"model.lora.target_modules=[{','.join(arch.lora_targets)}]",
                                   f"model.attn_implementation={arch.attn}", f"paths.outputs={tmp_path / 'out'}",
                                   *extra])
    modules, real = [], SelfPlayModule.training_step

    def step(self, *args, **kwargs):
        modules.append(self)
        return real(self, *args, **kwargs)

    SelfPlayModule.training_step = step
    try:
        train(cfg)
    finally:
        SelfPlayModule.training_step = real
    return modules, path
