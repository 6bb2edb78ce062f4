"""The toy judge as a classifier of correctness, and what it costs (experiments/toy_judge/README.md).

    .venv/bin/python experiments/toy_judge/judge_check.py [--world DIR] [--pairs 1024] [--answers 512]

1. the labelled pairs the runs log (`eval/judge/auc`): AUC overall and per kind of wrong answer
   (the teacher's wrong order, a dropped sign, a slip in one step), each against the right half;
   and how often the judge's check (before `<Score>`) is exactly what the rubric writes;
2. the base's own sampled answers to held-out problems (what the judge grades in a run): AUC
   overall, on the teacher's order-flaw class and on the other problems;
3. time: judging N x G = 64 pairs against sampling 64 answers (the Solver's part of a step).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from omegaconf import OmegaConf
from torchmetrics.functional.classification import binary_auroc

from lsp_exp.core.generation import chat_prompts, generate
from lsp_exp.core.models import Reference, load_tokenizer
from lsp_exp.judge.self_quality import SelfQualityJudge
from lsp_exp.judge.templates import get_template
from lsp_exp.run.config import PROJECT_ROOT
from lsp_exp.tasks.arith import derivation, steps_judge
from lsp_exp.tasks.arith.answers import answer_value
from lsp_exp.tasks.arith.task import ArithTask


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return float(binary_auroc(scores / 7, labels.long())) if 0 < int(labels.sum()) < len(labels) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world", default=None, help="a built world directory (default: the task's)")
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--answers", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = OmegaConf.load(PROJECT_ROOT / "conf" / "task" / "arith.yaml")
    task = ArithTask(world=cfg.world, bootstrap=cfg.bootstrap, outputs="outputs")
    world = args.world or str(task.base_model()).removesuffix("/model")
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(f"{world}/model").eval()
    tokenizer = load_tokenizer(f"{world}/model")
    judge = SelfQualityJudge(Reference(model, shared=True), tokenizer, get_template(task.judge_template))
    out: dict[str, float] = {}

    pairs = steps_judge.labelled_pairs(task.problems("heldout"), task.config, args.pairs, 0)
    judged_pairs = judge.score([p[0] for p in pairs], [p[1] for p in pairs])
    scores = judged_pairs.values
    wanted = [steps_judge.judge_reply(q, a, task.config).split(" <Score>")[0] for q, a, _, _ in pairs]
    exact = sum(t.split(" <Score>")[0] == w for t, w in zip(judged_pairs.texts, wanted, strict=True))
    out["labelled/check_exact_frac"] = exact / len(pairs)
    labels = torch.tensor([p[2] for p in pairs])
    kinds = [p[3] for p in pairs]
    out["labelled/auc"] = auc(scores, labels)
    for kind in steps_judge.WRONG_KINDS:
        keep = torch.tensor([k in ("right", kind) for k in kinds])
        out[f"labelled/auc/{kind}"] = auc(scores[keep], labels[keep])
        out[f"labelled/score/{kind}"] = float(scores[torch.tensor([k == kind for k in kinds])].mean())
    out["labelled/score/right"] = float(scores[labels].mean())

    problems = task.problems("heldout")[: args.answers // 4]
    prompts = chat_prompts(tokenizer, [p.text for p in problems])
    generator = torch.Generator().manual_seed(0)
    rollout = generate(model, tokenizer, prompts, max_new_tokens=task.max_answer_tokens, num_return_sequences=4,
                       generator=generator)
    queries = [p.text for p in problems for _ in range(4)]
    right = torch.tensor([answer_value(a, task.config) == p.answer for p, a in
                          zip([p for p in problems for _ in range(4)], rollout.texts, strict=True)])
    order = torch.tensor([derivation.order_flawed(p, task.config) for p in problems for _ in range(4)])
    judged = judge.score(queries, rollout.texts).values
    out["base_answers/right_frac"] = float(right.float().mean())
    out["base_answers/auc"] = auc(judged, right)
    out["base_answers/auc/order_class"] = auc(judged[order], right[order])
    out["base_answers/auc/other"] = auc(judged[~order], right[~order])

    batch = prompts[:8]
    t = time.perf_counter()
    for _ in range(3):
        sampled = generate(model, tokenizer, batch, max_new_tokens=task.max_answer_tokens, num_return_sequences=8,
                           generator=generator)
    solve = (time.perf_counter() - t) / 3
    qs = [p.text for p in problems[:8] for _ in range(8)]
    t = time.perf_counter()
    for _ in range(3):
        judge.score(qs, sampled.texts)
    out["time/solver_64_s"], out["time/judge_64_s"] = solve, (time.perf_counter() - t) / 3
    out["time/judge_over_solver"] = out["time/judge_64_s"] / solve
    print(json.dumps({k: round(v, 4) for k, v in out.items()}, indent=1))


if __name__ == "__main__":
    main()
