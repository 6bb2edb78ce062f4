"""The Challenger writes N queries: pi_Ch(q) = pi_theta(q | <cp>), <cp> the challenger prompt (LSP 1.3)."""
from __future__ import annotations

import torch

from lsp_exp.core.generation import SamplingOptions, chat_prompts, generate
from lsp_exp.games.base import Game, Queries
from lsp_exp.games.challenger_prompt import challenger_prompt


class ChallengerGame(Game):
    """The policy writes the N queries from the challenger prompt, sampled with `sampling`."""

    def __init__(self, cfg, prompt_style: str = "toy", sampling: SamplingOptions = SamplingOptions()):
        self.cfg = cfg
        self.user_turn = challenger_prompt(prompt_style, cfg.task, cfg.template)
        self.sampling = sampling

    def queries(self, policy, tokenizer) -> Queries:
        prompt = chat_prompts(tokenizer, [self.user_turn])
        rollout = generate(policy, tokenizer, prompt, max_new_tokens=self.cfg.max_query_tokens,
                           temperature=self.cfg.temperature, num_return_sequences=self.cfg.n_queries,
                           options=self.sampling)
        texts = [t.strip() for t in rollout.texts]
        nonempty = torch.tensor([bool(t) for t in texts], dtype=torch.bool, device=rollout.finished.device)
        return Queries(texts, rollout.finished & nonempty, rollout)
