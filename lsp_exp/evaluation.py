"""Held-out evaluation of the Solver: greedy accuracy, sampled pass@1 and pass@k, by difficulty."""
from __future__ import annotations

from collections import defaultdict

import torch

from lsp_exp.generation import chat_prompts, generate
from lsp_exp.toy.world import Problem, decode_answer


def _correct(texts: list[str], answers: list[int]) -> torch.Tensor:
    return torch.tensor([decode_answer(t) == a for t, a in zip(texts, answers)], dtype=torch.float32)


@torch.inference_mode()
def evaluate_solver(model, tokenizer, problems: list[Problem], *, max_new_tokens: int = 8,
                    batch_size: int = 1000, samples: int = 0, temperature: float = 1.0) -> dict[str, float]:
    """Greedy accuracy (overall and per difficulty); with `samples` = k > 0 also sampled pass@1 and pass@k
    (keys `pass_at_1`, `pass_at_<k>`: MLflow metric names cannot hold '@').

    pass_at_1 is the mean correctness of the k samples; pass_at_k is the share of problems with at least
    one correct sample. Sampling runs under `torch.random.fork_rng`, so evaluating does not change
    the training trajectory.
    """
    was_training = model.training
    model.eval()
    greedy, sampled = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for start in range(0, len(problems), batch_size):
            chunk = problems[start:start + batch_size]
            prompts = chat_prompts(tokenizer, [p.text for p in chunk])
            answers = [p.answer for p in chunk]
            out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=False)
            greedy.append(_correct(out.texts, answers))
            if samples > 0:
                out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=True,
                               temperature=temperature, num_return_sequences=samples)
                sampled.append(_correct(out.texts, [a for a in answers for _ in range(samples)]).view(-1, samples))
    model.train(was_training)
    greedy_t = torch.cat(greedy)
    metrics = {"accuracy": greedy_t.mean().item()}
    by_level = defaultdict(list)
    for p, ok in zip(problems, greedy_t.tolist()):
        by_level[p.difficulty].append(ok)
    metrics.update({f"accuracy/{k}": sum(v) / len(v) for k, v in sorted(by_level.items())})
    if samples > 0:
        sampled_t = torch.cat(sampled)
        metrics["pass_at_1"] = sampled_t.mean().item()
        metrics[f"pass_at_{samples}"] = (sampled_t.max(dim=1).values).mean().item()
    return metrics
