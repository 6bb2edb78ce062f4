"""Held-out evaluation of the Solver: greedy accuracy, sampled pass@1 and pass@k, by difficulty."""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch

from lsp_exp.core.generation import chat_prompts, generate
from lsp_exp.tasks.arith.world import Problem, decode_answer


def _correct(texts: list[str], answers: list[int]) -> torch.Tensor:
    return torch.tensor([decode_answer(t) == a for t, a in zip(texts, answers)], dtype=torch.float32)


@torch.inference_mode()
def evaluate_solver(model, tokenizer, problems: list[Problem], *, max_new_tokens: int = 8,
                    batch_size: int = 1000, samples: int = 0, temperature: float = 1.0,
                    slices: Callable[[Problem], list[str]] | None = None) -> dict[str, float]:
    """Greedy accuracy (overall and per difficulty); with `samples` = k > 0 also sampled pass@1 and pass@k
    (keys `pass_at_1`, `pass_at_<k>`: MLflow metric names cannot hold '@').

    pass_at_1 is the mean correctness of the k samples; pass_at_k is the share of problems with at least
    one correct sample. Sampling draws from its own generator (seed 0) on the model's device, so
    evaluating leaves every global RNG as it was: it does not change the training trajectory. Every metric is also reported per slice (`accuracy/<slice>`); a
    problem's slices are its difficulty, or what `slices(problem)` returns.
    """
    was_training = model.training
    model.eval()
    greedy, sampled = [], []
    generator = torch.Generator(device=model.device).manual_seed(0)
    for start in range(0, len(problems), batch_size):
        chunk = problems[start:start + batch_size]
        prompts = chat_prompts(tokenizer, [p.text for p in chunk])
        answers = [p.answer for p in chunk]
        out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=False)
        greedy.append(_correct(out.texts, answers))
        if samples > 0:
            out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=True,
                           temperature=temperature, num_return_sequences=samples, generator=generator)
            sampled.append(_correct(out.texts, [a for a in answers for _ in range(samples)]).view(-1, samples))
    model.train(was_training)
    greedy_t = torch.cat(greedy)
    metrics = {"accuracy": greedy_t.mean().item()}
    slices = slices or (lambda p: [p.difficulty])
    metrics.update(_by_slice("accuracy", problems, greedy_t, slices))
    if samples > 0:
        sampled_t = torch.cat(sampled)
        pass_1, pass_k = sampled_t.mean(dim=1), sampled_t.max(dim=1).values
        metrics["pass_at_1"] = pass_1.mean().item()
        metrics[f"pass_at_{samples}"] = pass_k.mean().item()
        metrics.update(_by_slice("pass_at_1", problems, pass_1, slices))
        metrics.update(_by_slice(f"pass_at_{samples}", problems, pass_k, slices))
    return metrics


def _by_slice(name: str, problems: list[Problem], scores: torch.Tensor, slices) -> dict[str, float]:
    by_level = defaultdict(list)
    for p, score in zip(problems, scores.tolist()):
        for key in slices(p):
            by_level[key].append(score)
    return {f"{name}/{k}": sum(v) / len(v) for k, v in sorted(by_level.items())}
