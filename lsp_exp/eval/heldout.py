"""Held-out evaluation of the Solver on a task's `HeldoutSet`: greedy accuracy, sampled pass@1 and
pass@k, overall and per slice."""
from __future__ import annotations

from collections import defaultdict

import torch

from lsp_exp.core.generation import SamplingOptions, chat_prompts, generate
from lsp_exp.tasks.base import HeldoutSet


@torch.inference_mode()
def evaluate_solver(model, tokenizer, heldout: HeldoutSet, *, max_new_tokens: int = 8, batch_size: int = 1000,
                    samples: int = 0, temperature: float = 1.0, progress=None,
                    sampling: SamplingOptions = SamplingOptions()) -> dict[str, float]:
    """Greedy accuracy (overall and per slice); with `samples` = k > 0 also sampled pass@1 and pass@k
    (keys `pass_at_1`, `pass_at_<k>`: MLflow metric names cannot hold '@').

    pass_at_1 is the mean correctness of the k samples; pass_at_k is the share of problems with at least
    one correct sample. `progress(answers)`, if given, is called with the number of answers generated
    so far (greedy and sampled) after each pass. Sampling draws from its own generator (seed 0) on the
    model's device, so evaluating leaves every global RNG as it was: it does not change the training
    trajectory. Every metric is also reported per slice (`accuracy/<slice>`), the slices the task gave
    each prompt.
    `sampling`: how `generate` decodes (the run's `trainer.hf_generate` and `trainer.generation_batch_size`).
    """
    was_training = model.training
    model.eval()
    greedy, sampled = [], []
    generator = torch.Generator(device=model.device).manual_seed(0)
    n = len(heldout.prompts)
    for start in range(0, n, batch_size):
        index = range(start, min(start + batch_size, n))
        prompts = chat_prompts(tokenizer, [heldout.prompts[i] for i in index])
        out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=False, options=sampling)
        greedy.append(_correct(heldout, index, out.texts, 1))
        if progress is not None:
            progress(start * (1 + samples) + len(index))
        if samples > 0:
            out = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=True,
                           temperature=temperature, num_return_sequences=samples, generator=generator,
                           options=sampling)
            sampled.append(_correct(heldout, index, out.texts, samples).view(-1, samples))
            if progress is not None:
                progress(index.stop * (1 + samples))
    model.train(was_training)
    greedy_t = torch.cat(greedy)
    metrics = {"accuracy": greedy_t.mean().item()}
    metrics.update(_by_slice("accuracy", heldout.slices, greedy_t))
    if samples > 0:
        sampled_t = torch.cat(sampled)
        pass_1, pass_k = sampled_t.mean(dim=1), sampled_t.max(dim=1).values
        metrics["pass_at_1"] = pass_1.mean().item()
        metrics[f"pass_at_{samples}"] = pass_k.mean().item()
        metrics.update(_by_slice("pass_at_1", heldout.slices, pass_1))
        metrics.update(_by_slice(f"pass_at_{samples}", heldout.slices, pass_k))
    return metrics


def _correct(heldout: HeldoutSet, index: range, texts: list[str], copies: int) -> torch.Tensor:
    """1.0 where an answer is correct; `texts` holds `copies` answers per prompt, prompt-major."""
    return torch.tensor([heldout.is_correct(i, texts[k * copies + c]) for k, i in enumerate(index)
                         for c in range(copies)], dtype=torch.float32)


def _by_slice(name: str, slices: list[list[str]], scores: torch.Tensor) -> dict[str, float]:
    by_slice = defaultdict(list)
    for keys, score in zip(slices, scores.tolist(), strict=True):
        for key in keys:
            by_slice[key].append(score)
    return {f"{name}/{k}": sum(v) / len(v) for k, v in sorted(by_slice.items())}
