r"""`lsp-eval`: evaluate a run's final model against the base model and log into that run.

    lsp-eval run=<run id>                      # held-out accuracy, win rate vs base, perplexity, BLEU/ROUGE, diversity
    lsp-eval "run=\"filter:tags.arm = 'lsp'\""  # every finished run that matches, one after the other
    lsp-eval                                   # the base model itself, as a new run (the table's "Base" row)

`run` is checked (the run exists, the filter parses and matches) before any model is loaded.

Metrics (logged at the run's last step, keys `eval/...`): the held-out greedy `accuracy` overall and
by slice (toy world); `win_rate`, `tie_rate`, `loss_rate` and `win_rate/<split>` against the base
model on a prompt file; `perplexity` of reference answers and beside it `perplexity_ngram`, that of
a Kneser-Ney n-gram model fitted on the task's training answers (`perplexity.ngram`, 3); `bleu` and
`rouge_l` of the model's answers against references; and per sample table of the run,
`diversity/{distinct_1,distinct_2,self_bleu}` of the Challenger's queries (a collapse detector), at
the step of that table.

A run is evaluated as it was trained (run/trained_config.py): its task, model (`model.path`, LoRA),
reward and answer length come from the config it logged; the command line overrides only the keys it
names, and one that would load other weights than the run's (`model.path=...`) stops in one line.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # its download bars: noise here

import hydra
import mlflow
import torch
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from lsp_exp.cli.overrides import check_overrides
from lsp_exp.core.generation import chat_prompts, generate
from lsp_exp.core.models import Reference, resolve_model_path
from lsp_exp.core.prompt_bound import prompt_bound
from lsp_exp.core.prompts import PromptRow, read_prompt_rows
from lsp_exp.errors import ConfigError, LspError
from lsp_exp.eval.heldout import evaluate_solver
from lsp_exp.eval.metrics import (conditional_perplexity, diversity, ngram_perplexity, spaced_chars,
                                  text_overlap, win_rate)
from lsp_exp.judge.self_quality import SelfQualityJudge
from lsp_exp.judge.templates import get_template
from lsp_exp.nodes import build
from lsp_exp.rewards import build_reward
from lsp_exp.run import config  # registers the schemas
from lsp_exp.run.chaining import RUN_ID, InitFromError, find_runs, is_adapter, resolve_init_from
from lsp_exp.run.checkpointing import job_overrides
from lsp_exp.run.tracking import ensure_experiment, flat_params, git_commit, init_sqlite_store, tracking_uri
from lsp_exp.run.trained_config import MissingRunConfigError, as_trained, onto_run_nodes, stored_config
from lsp_exp.run.trained_weights import Target, load_model


def targets(cfg: DictConfig, uri: str | None) -> list[Target]:
    """What `run` names, each checked before any model is loaded: a directory of weights, a run id
    that exists in the store, or a filter that parses and matches (errors name `run=`). A run's weights
    are fetched by `plan`, once its stored config is checked."""
    if cfg.run is None:
        return [Target("base", None, None)]
    if Path(cfg.run).expanduser().is_dir():
        return [Target(str(cfg.run), str(resolve_init_from(cfg.run, uri, cfg.paths.outputs, key="run")), None)]
    run_ids = find_runs(cfg.run, uri, key="run")
    if RUN_ID.match(str(cfg.run)):
        check_run_exists(cfg.run, uri)
    return [Target(run_id, None, run_id) for run_id in run_ids]


def check_run_exists(run_id: str, uri: str | None) -> None:
    try:
        mlflow.MlflowClient(uri).get_run(run_id)
    except MlflowException:
        raise InitFromError(f"run={run_id!r}: no such MLflow run in {uri} (give logger.tracking_uri=... for "
                            "another store)") from None


def answer_texts(model, tokenizer, rows: list[PromptRow], wr: DictConfig, batch_size: int) -> list[str]:
    """The model's answers to every prompt (greedy at temperature 0; sampled from a generator of its own)."""
    out: list[str] = []
    generator = torch.Generator(device=model.device).manual_seed(0)
    for start in range(0, len(rows), batch_size):
        prompts = chat_prompts(tokenizer, [r.prompt for r in rows[start:start + batch_size]])
        out += generate(model, tokenizer, prompts, max_new_tokens=wr.max_new_tokens, do_sample=wr.temperature > 0,
                        temperature=max(wr.temperature, 1e-5), generator=generator).texts
    return out


class WinRateScorer:
    """Scores (prompt, answer) pairs for the win rate: the `reward` group, or an LLM with the rubric."""

    def __init__(self, cfg: DictConfig, base_path: str, task, loader):
        self.kind = cfg.win_rate.judge
        if self.kind == "reward":
            self.reward = build_reward(cfg.reward, task=task)
            if getattr(self.reward, "grades_groups", False):  # a vote needs G answers to one query, not one
                raise ConfigError(f"win_rate.judge=reward: reward={cfg.reward.get('name', '?')} grades a query's "
                                  "group of answers together, not one answer; name a reward that judges one "
                                  "(e.g. reward=arithmetic) or win_rate.judge=llm")
        elif self.kind == "llm":
            path = cfg.win_rate.judge_model or base_path
            model, tokenizer = loader.frozen(path), loader.tokenizer(path)
            template = cfg.win_rate.judge_template if cfg.win_rate.judge_template != "auto" else task.judge_template
            self.llm = SelfQualityJudge(Reference(model, shared=True), tokenizer, get_template(template))  # no copy
        else:
            raise ConfigError(f"win_rate.judge={self.kind!r}: unknown; available: reward, llm")

    def scores(self, prompts: list[str], answers: list[str]) -> torch.Tensor:
        if self.kind == "reward":
            return self.reward.score(prompts, answers).values.float().cpu()
        return self.llm.score(prompts, answers).values.float().cpu()


def challenger_queries(client, run_id: str) -> dict[int, list[str]]:
    """step -> the Challenger's N queries, from the run's sample tables (rows repeat a query G times).
    Read before any model is loaded: a corrupt param or table is one line naming it (InitFromError)."""
    out: dict[int, list[str]] = {}
    params = client.get_run(run_id).data.params
    if params.get("game.challenger") != "True":
        return out  # grpo_data: the queries are the prompt file's
    value = params.get("game.group_size", "1")
    try:
        g = int(value)
    except ValueError:
        g = 0
    if g < 1:
        raise InitFromError(f"run={run_id!r}: its stored param game.group_size={value!r} is not a whole number >= 1 "
                            "(the run's params are corrupt); diversity=false evaluates without the diversity metrics")
    with tempfile.TemporaryDirectory() as tmp:
        for art in client.list_artifacts(run_id, "samples"):
            try:
                table = json.loads(Path(client.download_artifacts(run_id, art.path, tmp)).read_text(encoding="utf-8"))
                column = table["columns"].index("query")
                step = int(Path(art.path).stem.removeprefix("step_"))
                out[step] = [str(row[column]) for row in table["data"]][::g]
            except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as err:
                raise InitFromError(f"run={run_id!r}: its sample table {art.path} is not readable "
                                    f"({type(err).__name__}); diversity=false evaluates without it") from None
    return out


def evaluate(cfg: DictConfig, overrides: list[str] | None = None) -> list[dict[str, float]]:
    """Evaluate every target of `cfg.run`, each run as it was trained (`overrides`: the command line's, which
    win over the run's config; None: this Hydra job's); returns their metrics (also logged to MLflow)."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    uri = tracking_uri(cfg) if cfg.logger.name != "none" else None
    if uri and uri.startswith("sqlite:///"):
        init_sqlite_store(uri)
    client = mlflow.MlflowClient(uri) if uri else None
    evaluated = targets(cfg, uri)  # a wrong run id or filter fails here, before any model is loaded
    queries = {t.run_id: challenger_queries(client, t.run_id) for t in evaluated  # (corrupt params: here too)
               if cfg.diversity and client is not None and t.run_id is not None}
    results: dict[int, dict[str, float]] = {}
    for group_cfg, group in plan(cfg, uri, evaluated, job_overrides() if overrides is None else overrides):
        results.update(evaluate_group(group_cfg, group, client, queries))
    return [results[i] for i in range(len(evaluated))]


def plan(cfg: DictConfig, uri: str | None, evaluated: list[Target],
         overrides: list[str] | None) -> list[tuple[DictConfig, list[tuple[int, Target]]]]:
    """Each target's config (a run's: as trained, run/trained_config.py), targets of one config together
    (one task and one base model for them). Every run's stored config is read and checked before any
    weights are fetched."""
    configs, trained = [], {}
    for target in evaluated:
        if target.run_id is None:
            configs.append(cfg)
            continue
        try:
            trained[target.run_id] = stored_config(mlflow.MlflowClient(uri), target.run_id)
        except MissingRunConfigError as err:
            try:
                weights = resolve_init_from(target.run_id, uri, cfg.paths.outputs, key="run")
            except InitFromError:  # not a run of lsp-train at all (e.g. an eval run): no weights either
                raise err from None
            raise MissingRunConfigError(f"{err}; run={weights} evaluates its weights with this command's task, "
                                        "model and reward") from None
        configs.append(as_trained(cfg, trained[target.run_id], target.run_id, overrides or []))
    groups: dict[str, tuple[DictConfig, list[tuple[int, Target]]]] = {}
    for i, (target, own) in enumerate(zip(evaluated, configs, strict=True)):
        if target.run_id is not None:
            target.path = str(resolve_init_from(target.run_id, uri, cfg.paths.outputs, key="run"))
            start = trained[target.run_id].get("init_from")
            if start and is_adapter(Path(target.path)):  # its adapter goes over the weights it started from
                target.below = str(resolve_init_from(str(start), uri, cfg.paths.outputs))
        groups.setdefault(OmegaConf.to_yaml(own), (own, []))[1].append((i, target))
    return list(groups.values())


def evaluate_group(cfg: DictConfig, group: list[tuple[int, Target]], client,
                   queries: dict[str, dict[int, list[str]]]) -> dict[int, dict[str, float]]:
    """Evaluate targets that share `cfg` (one task, base model and judge); their metrics by index."""
    task, loader = build(cfg.task, "task"), build(cfg.model, "model")
    base_path = resolve_model_path(cfg.model, task)
    char_level = task.char_level if cfg.char_level is None else cfg.char_level
    # the base's tokenizer and context bound a row before it is tokenized (core/prompt_bound.py)
    answer_tokens = max(cfg.heldout.max_new_tokens, cfg.win_rate.max_new_tokens)
    task.prompt_bound = bound = prompt_bound(loader.tokenizer(base_path), base_path, answer_tokens,
                                             "max(heldout.max_new_tokens, win_rate.max_new_tokens)")
    task_set = task.heldout()
    heldout = task_set.head(cfg.heldout.max_problems) if (cfg.heldout.enabled and task_set is not None) else None
    wr_rows = (_rows(cfg.win_rate.prompts_path, task_set, cfg.win_rate.max_prompts, bound)
               if cfg.win_rate.enabled else [])
    ppl_rows = [r for r in _rows(cfg.perplexity.path, task_set, cfg.perplexity.max_rows, bound)
                if r.reference is not None] if cfg.perplexity.enabled else []
    ngram = None  # the classical reference: a Kneser-Ney n-gram model of the training split's answers
    train_refs = task.train_references() if ppl_rows and cfg.perplexity.ngram > 0 else None
    if train_refs:
        ngram = ngram_perplexity(train_refs, [r.reference for r in ppl_rows], n=cfg.perplexity.ngram,
                                 tokenize=list if char_level else str.split)
    judge = WinRateScorer(cfg, base_path, task, loader) if wr_rows else None
    base_scores = None
    if wr_rows:
        base_model, base_tok = load_model(loader, base_path, Target("base", None, None))
        base_answers = answer_texts(base_model, base_tok, wr_rows, cfg.win_rate, cfg.batch_size)
        base_scores = judge.scores([r.prompt for r in wr_rows], base_answers)
        del base_model
    console, results = Console(), {}
    for index, target in group:
        start = time.perf_counter()
        model, tokenizer = load_model(loader, base_path, target)
        metrics: dict[str, float] = {}
        if heldout is not None:
            metrics.update(evaluate_solver(model, tokenizer, heldout, samples=cfg.heldout.samples,
                                           max_new_tokens=cfg.heldout.max_new_tokens))
        if wr_rows:
            answers = answer_texts(model, tokenizer, wr_rows, cfg.win_rate, cfg.batch_size)
            scores = judge.scores([r.prompt for r in wr_rows], answers)
            metrics.update(win_rate(scores, base_scores, [r.split for r in wr_rows],
                                    tie_value=cfg.win_rate.tie_value, margin=cfg.win_rate.margin))
            refs = [(a, r.reference) for a, r in zip(answers, wr_rows, strict=True) if r.reference is not None]
            if refs:
                shape = spaced_chars if char_level else (lambda t: t)
                metrics.update(text_overlap([shape(a) for a, _ in refs], [shape(r) for _, r in refs],
                                            n_gram=2 if char_level else 4))  # toy answers are 1-4 characters
        if ppl_rows:
            prompts = chat_prompts(tokenizer, [r.prompt for r in ppl_rows])
            metrics["perplexity"] = conditional_perplexity(model, tokenizer, prompts, [r.reference for r in ppl_rows],
                                                           batch_size=cfg.batch_size)
        if ngram is not None:
            metrics["perplexity_ngram"] = ngram
        curves = {}
        for step, texts in sorted(queries.get(target.run_id, {}).items()):
            tokens = [list(q) if char_level else tokenizer(q, add_special_tokens=False)["input_ids"] for q in texts]
            curves[step] = diversity(tokens)
        metrics["eval_s"] = time.perf_counter() - start
        _log(cfg, client, target, metrics, curves)
        console.print(f"{target.label}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if "/" not in k))
        results[index] = metrics
    return results


def _rows(path: str | None, task_set, limit: int | None, bound=None) -> list[PromptRow]:
    """A prompt file's rows (within `bound`), or the task's held-out set as rows (split: its first slice)."""
    if path:
        return read_prompt_rows(path, bound)[:limit]
    if task_set is None:
        return []
    rows = [PromptRow(p, s[0] if s else "all", r)
            for p, s, r in zip(task_set.prompts, task_set.slices, task_set.references, strict=True)]
    return rows[:limit]


def _log(cfg: DictConfig, client, target: Target, metrics: dict[str, float],
         curves: dict[int, dict[str, float]]) -> None:
    if client is None:
        return
    now = int(time.time() * 1000)
    run_id = target.run_id
    if run_id is None:  # the base model or a directory: a new eval run
        exp_id = ensure_experiment(client._tracking_client.tracking_uri, cfg.logger.experiment_name)
        tags = {"kind": "eval", "model": cfg.model.name, "evaluated": target.label, **dict(cfg.tags)}
        if commit := git_commit():
            tags["git_commit"] = commit
        run_id = client.create_run(exp_id, tags=tags, run_name=f"eval-{target.label.split('/')[-1]}").info.run_id
        params = {f"eval.{k}": str(v)[:500] for k, v in flat_params(cfg).items()}
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=[Param(k, v) for k, v in list(params.items())[i:i + 100]])
        step = 0
    else:
        history = client.get_metric_history(run_id, "eval/accuracy")
        step = max((m.step for m in history), default=0)
        for k, v in cfg.tags.items():
            client.set_tag(run_id, k, v)
    batch = [Metric(f"eval/{k}", float(v), now, step) for k, v in metrics.items()]
    batch += [Metric(f"eval/diversity/{k}", float(v), now, s) for s, m in curves.items() for k, v in m.items()]
    for i in range(0, len(batch), 500):
        client.log_batch(run_id, metrics=batch[i:i + 500])
    client.set_tag(run_id, "lsp_eval", time.strftime("%Y-%m-%dT%H:%M:%S"))
    client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "eval/config.yaml")
    if target.run_id is None:
        client.set_terminated(run_id)


def main() -> None:
    """`lsp-eval`: an override that does not parse fails with one line naming it; then Hydra (a run's
    task, model and reward keys set onto its own nodes: trained_config.onto_run_nodes)."""
    check_overrides(sys.argv[1:])
    sys.argv[1:] = onto_run_nodes(sys.argv[1:])
    hydra_main()


@hydra.main(version_base="1.3", config_path=str(config.PROJECT_ROOT / "conf"), config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    try:
        evaluate(cfg)
    except (LspError, ValueError) as err:  # one line, exit code 2 (ValueError: a file lsp-eval reads, named)
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
