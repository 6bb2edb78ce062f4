"""`lsp-train`: seed -> build model, game, reward -> fit the self-play module -> report.

    lsp-train                                  # the default experiment (LSP, toy world)
    lsp-train game=grpo_data kl=none seed=1    # switch groups from the command line
    lsp-train -m seed=0,1,2 game=lsp_zero,grpo_data   # a Hydra multirun sweep
"""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

# No telemetry, and nothing fetched from the Hugging Face hub at run time (HF_HUB_OFFLINE=0 allows it).
for _key, _value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_key, _value)

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig
from torch.utils.data import DataLoader, IterableDataset

from lsp_exp.cli.overrides import check_overrides
from lsp_exp.core.checkpoint_keys import check_checkpoint_keys, saved_weight_names
from lsp_exp.core.generation import SamplingOptions
from lsp_exp.core.logprobs import LogprobOptions
from lsp_exp.errors import ConfigError, LspError
from lsp_exp.games import build_game
from lsp_exp.nodes import build
from lsp_exp.rewards import build_reward
from lsp_exp.rl.role_rewards import challenger_objective, check_objective
from lsp_exp.run import config  # registers the schemas
from lsp_exp.run.chaining import resolve_init_from
from lsp_exp.run.checkpointing import mark_interrupted, prepare_resume
from lsp_exp.run.console import accuracy_line, progress_bar, say, where_to_look
from lsp_exp.run.evaluation import HeldoutEvaluation
from lsp_exp.run.launch import check_launch
from lsp_exp.run.policy_and_data import PolicyAndData, load_policy_and_data
from lsp_exp.run.run_end import end_run
from lsp_exp.run.run_health import RunHealth
from lsp_exp.run.sample_tables import SampleTables
from lsp_exp.run.self_play import SelfPlayModule
from lsp_exp.run.session import build_trainer, tracked_run
from lsp_exp.run.step_logging import StepMetricsLogger
from lsp_exp.run.sweep_callback import end_open_sweep
from lsp_exp.run.sweep_jobs import JobFailed, job_label
from lsp_exp.run.tracking import log_final_model, save_model, tracking_uri
from lsp_exp.run.tracking_failures import ACTIVE_LOGGERS, TRACKING_ERRORS, fail_active_runs, one_line
from lsp_exp.run.validation import preflight, validate

warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
warnings.filterwarnings("ignore", message=".*litlogger.*")
log = logging.getLogger(__name__)


class StepStream(IterableDataset):
    """An endless stream of step indices: each self-play step makes its own data."""

    def __iter__(self):
        step = 0
        while True:
            yield step
            step += 1


@dataclass(frozen=True)
class JobResult:
    history: dict[int, dict[str, float]]   # the held-out metrics by step
    last_step: dict[str, float]            # the figures (train/*, perf/*) of the last step


def train(cfg: DictConfig) -> dict[int, dict[str, float]]:
    """Run one training job; returns the held-out metrics by step."""
    return run_job(cfg).history


def run_job(cfg: DictConfig) -> JobResult:
    """Run one training job (SIGTERM during its start-up ends its run KILLED)."""
    with interrupts_during_startup():
        return _train(cfg)


def _train(cfg: DictConfig) -> JobResult:
    """Prepare, build each component, fit inside the tracked run, finish."""
    requeued = cfg.get("resume") == "auto"
    cfg, resume, overrides = prepare(cfg)
    init = resolve_init_from(cfg.init_from, tracking_uri(cfg), cfg.paths.outputs) if cfg.init_from else None
    task = _built("task", build(cfg.task, "task"))
    model = _built("policy", load_policy_and_data(cfg, task, init))  # the data first, bounded by the model
    reward = _built("reward", build_reward(cfg.reward, task=task))
    sampling, logprobs = SamplingOptions.of(cfg.trainer), LogprobOptions.of(cfg.trainer)
    try:
        check_objective(challenger_objective(cfg.game.challenger_objective, build), reward.bounds)
        game = _built("game", build_game(cfg.game, task, model.prompts, cfg.seed, sampling=sampling))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    truth = task.ground_truth()  # the verifier beside a proxy reward, unless it is the reward itself
    template = cfg.game.judge.template if cfg.game.judge.template != "auto" else task.judge_template
    module = _built("module", SelfPlayModule(
        cfg, model.policy, model.tokenizer, game, reward, task, judge_template=template, sampling=sampling,
        logprobs=logprobs, verifier=truth if truth is not None and type(truth) is not type(reward) else None))
    if resume is not None:  # before Lightning loads anything: a sharded run loads non-strictly
        check_checkpoint_keys(saved_weight_names(resume.path), module)
    steps, evaluation = StepMetricsLogger(), HeldoutEvaluation(
        model.heldout, every=cfg.eval.every_n_steps, samples=cfg.eval.samples, judge_threshold=cfg.eval.judge_threshold,
        max_new_tokens=cfg.game.max_answer_tokens,
        labelled_pairs=task.labelled_pairs(cfg.eval.judge_pairs) if cfg.eval.judge_pairs else None)
    health = RunHealth(cfg.trainer.health, steps)  # a run that cannot learn says so; after `steps`: reads its figures
    with tracked_run(cfg, resume, overrides, requeued) as run:
        bar = [progress_bar(cfg)] if cfg.trainer.enable_progress_bar else []
        # the step's metrics reach the store before its checkpoint
        trainer = build_trainer(cfg, run.logger, [steps, health, SampleTables(cfg.eval.sample_table_every), *bar,
                                                  evaluation, run.checkpoints])
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # from here on Lightning's: a checkpoint at the step's end
        try:
            trainer.fit(module, train_dataloaders=DataLoader(StepStream(), batch_size=None),
                        ckpt_path=str(resume.path) if resume else None, weights_only=True)  # runs no code
        except SIGTERMException:  # SIGTERM or Ctrl-C: checkpoint at the step's end; the run KILLED; exit 143
            mark_interrupted(run.logger, run.checkpoints.last_path)
            raise SystemExit(143) from None
    if trainer.is_global_zero:
        finish(cfg, run.logger, module, model, evaluation, health.summary())
    return JobResult(evaluation.history, steps.last)


def prepare(cfg: DictConfig):
    """`resume=` (the run's own config, its checkpoint and MLflow run), the config's checks, how the
    ranks start (DDP in a multirun; FSDP refused), the files it names and the tracking server: all
    before anything is built. Returns (config, what to resume, the overrides to save in checkpoints)."""
    cfg, resume, overrides = prepare_resume(cfg)
    validate(cfg)
    check_launch(cfg)
    preflight(cfg)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # hardware/tip chatter
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    return cfg, resume, overrides


def _built(what: str, component):
    log.info("built the %s: %s", what, type(component).__name__)
    return component


def finish(cfg: DictConfig, logger, module: SelfPlayModule, model: PolicyAndData, evaluation: HeldoutEvaluation,
           health: list[str] | None = None):
    """The metrics, the final model, then FINISHED, each retried (run/run_end.py); then the report."""
    weights = module.final_weights  # the full weights gathered at the end of a sharded run (else None)
    entry = {"base_model": model.model_path, "dtype": cfg.model.get("dtype", "float32"),
             "max_new_tokens": cfg.game.max_answer_tokens}
    end_run(logger, cfg.paths.outputs,
            lambda: log_final_model(logger, model.policy, model.tokenizer, cfg.paths.outputs, state_dict=weights,
                                    entry=entry, upload=cfg.logger.get("log_model", True)),
            save_locally=lambda folder: save_model(folder, model.policy, model.tokenizer, weights))
    report(evaluation.history, logger, evaluation.judging, health)


def _in_a_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def objective(cfg: DictConfig, result: JobResult) -> float:
    """The value a sweeper optimises (`optimized_metric`): an `eval/<key>` of the last held-out
    evaluation, or a per-step figure (`train/...`, `perf/...`) of the last step; NaN, with a line
    saying so, when the run has no such figure."""
    key = cfg.get("optimized_metric") or "eval/accuracy"
    if key.startswith("eval/"):
        history = result.history
        value = history[max(history)].get(key.removeprefix("eval/")) if history else None
    else:
        value = result.last_step.get(key)
    if value is None:
        if _in_a_sweep():
            say(f"optimized_metric={key}: this run has no such figure; the sweeper gets no value (a failed "
                "Optuna trial)", err=True)
        return float("nan")
    return float(value)


@contextmanager
def interrupts_during_startup():
    """Until `fit` installs Lightning's handler (a checkpoint at the end of the step in progress),
    SIGTERM raises SIGTERMException: the start-up stops and its MLflow run ends KILLED, never left
    RUNNING by a default-action kill. The previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SIGTERMException()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def report(history: dict[int, dict[str, float]], logger, judging: dict[str, float] | None = None,
           health: list[str] | None = None) -> None:
    """The end of a run: how the reward and the judge classify correctness (measured at the start),
    the held-out result before and after, the run health conditions that held (run/run_health.py),
    the run's name and a link that opens it in the UI."""
    for who in ("reward", "judge"):
        if f"{who}/f1" in (judging or {}):
            say(f"{who} as a classifier of correctness (at start): " + "  ".join(
                f"{k} {judging[f'{who}/{k}']:.3f}" for k in ("precision", "recall", "f1", "auc")
                if f"{who}/{k}" in judging))
    line = accuracy_line(history)
    if line:
        say(line)
    for line in health or ():
        say(line)
    if logger is not None:
        model = getattr(logger, "model_id", None)
        say(f"MLflow run '{logger._run_name}' ({logger.run_id}) in experiment '{logger._experiment_name}'"
            + (f"; final model: mlflow.pyfunc.load_model('models:/{model}')" if model else ""))
        say(where_to_look(logger._tracking_uri, logger.experiment_id, logger.run_id))


def main() -> None:
    """`lsp-train`: an override that does not parse fails with one line naming it; then Hydra. A
    multirun stopped before its end (Ctrl-C, SIGTERM, a sweeper's error) ends its parent runs."""
    check_overrides(sys.argv[1:])
    try:
        hydra_main()
    except BaseException as err:
        end_open_sweep(err)
        raise


def _failed(line: str, code: int):
    """A job's failure: exit `code` after the line, or in a multirun the line (stderr and the job's
    log, with the job's number and overrides) and `JobFailed` for the sweeper, which goes on."""
    if not _in_a_sweep():
        say(line, err=True)
        raise SystemExit(code) from None
    line = f"error: {job_label(HydraConfig.get())} failed: {line.removeprefix('error: ')}"
    say(line, err=True)
    return JobFailed(line)


@hydra.main(version_base="1.3", config_path=str(config.PROJECT_ROOT / "conf"), config_name="train")
def hydra_main(cfg: DictConfig) -> float | JobFailed | str:
    """One job; returns `optimized_metric`. Any exception ends its MLflow run FAILED with the error (tag
    `error`, `error.txt`); in a multirun a failed job returns `JobFailed` (run/sweep_jobs.py)."""
    ACTIVE_LOGGERS.clear()
    try:
        result = run_job(cfg)
    except LspError as err:  # a failure whose message says it all: one line, exit code 2, no traceback
        fail_active_runs(err)
        return _failed(f"error: {one_line(err, 1000)}", 2)
    except TRACKING_ERRORS as err:  # the tracking server failed outside the training loop
        fail_active_runs(err)
        return _failed(f"error: MLflow tracking ({cfg.logger.get('tracking_uri')}): {one_line(err, 1000)}", 2)
    except SIGTERMException as err:  # SIGTERM during start-up: no step to finish; the run ends KILLED
        started = bool(ACTIVE_LOGGERS)   # an MLflow run exists only once the logger is built
        fail_active_runs(err)
        say("interrupted during start-up (SIGTERM): " + ("the run is marked KILLED" if started else
                                                         "no MLflow run was started yet"), err=True)
        raise SystemExit(143) from None
    except SystemExit as exit_:  # its run is ended already (e.g. KILLED with its checkpoint after SIGTERM)
        ACTIVE_LOGGERS.clear()
        if exit_.code in (None, 0, 143) or not _in_a_sweep():  # (143: interrupted, the sweep stops too)
            raise
        return _failed(f"error: exit code {exit_.code}", 2)
    except Exception as err:  # a bug: FAILED; its traceback (Hydra prints it, or here in a multirun)
        fail_active_runs(err)
        if not _in_a_sweep():
            raise
        traceback.print_exc()
        return _failed(f"error: {type(err).__name__}: {one_line(err, 1000)}", 1)
    except BaseException as err:  # Ctrl-C: KILLED, and the sweep stops
        fail_active_runs(err)
        raise
    ACTIVE_LOGGERS.clear()
    value = objective(cfg, result)  # what a sweeper (hparams_search=..., Optuna) optimises
    if math.isnan(value) and _in_a_sweep():  # Optuna stops a study at NaN; a text fails only the trial
        return f"no {cfg.get('optimized_metric') or 'eval/accuracy'} in this run"
    return value


if __name__ == "__main__":
    main()
