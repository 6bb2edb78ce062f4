"""The Challenger writes N queries: pi_Ch(q) = pi_theta(q | <cp>), <cp> the challenger prompt (LSP 1.3)."""
from __future__ import annotations

import torch

from lsp_exp.games.base import Queries
from lsp_exp.core.generation import chat_prompts, generate
from lsp_exp.games.challenger_prompt import challenger_prompt


class ChallengerGame:
    def __init__(self, cfg, prompt_style: str = "toy"):
        self.cfg = cfg
        self.user_turn = challenger_prompt(prompt_style, cfg.task, cfg.template)

    def queries(self, policy, tokenizer) -> Queries:
        prompt = chat_prompts(tokenizer, [self.user_turn])
        rollout = generate(policy, tokenizer, prompt, max_new_tokens=self.cfg.max_query_tokens,
                           temperature=self.cfg.temperature, num_return_sequences=self.cfg.n_queries)
        texts = [t.strip() for t in rollout.texts]
        nonempty = torch.tensor([bool(t) for t in texts], dtype=torch.bool, device=rollout.finished.device)
        return Queries(texts, rollout.finished & nonempty, rollout)
