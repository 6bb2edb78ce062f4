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

# No telemetry, and nothing fetched from the Hugging Face hub at run time (HF_HUB_OFFLINE=0 allows it).
for _key, _value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_key, _value)

import hydra  # noqa: E402
import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: E402
from lightning.pytorch.utilities.rank_zero import rank_zero_only  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset  # noqa: E402

from lsp_exp.run import config  # noqa: E402,F401  (registers the schemas)
from lsp_exp.run.run_lock import RunLock, RunLockedError  # noqa: E402
from lsp_exp.run.saved_state import UnsafeSavedStateError  # noqa: E402
from lsp_exp.run.sweep_callback import end_open_sweep  # noqa: E402
from lsp_exp.run.sweep_jobs import JobFailed, job_label  # noqa: E402
from lsp_exp.run.checkpointing import (CheckpointError, ResumeError, StepCheckpoint, checkpoint_dir,  # noqa: E402
                                       continue_run, mark_interrupted, note_died, prepare_resume)
from lsp_exp.run.launch import check_launch, release_ranks, trainer_strategy  # noqa: E402
from lsp_exp.run.memory_check import check_memory  # noqa: E402
from lsp_exp.run.chaining import InitFromError, is_adapter, resolve_init_from  # noqa: E402
from lsp_exp.core.checkpoint_keys import CheckpointMismatchError, check_checkpoint_keys, saved_weight_names  # noqa: E402
from lsp_exp.core.fused_head import output_layer  # noqa: E402
from lsp_exp.core.generation import settings as generation_settings  # noqa: E402
from lsp_exp.games import build_game  # noqa: E402
from lsp_exp.core.models import ModelNotFoundError, resolve_model_path  # noqa: E402
from lsp_exp.core.prompts import read_prompts  # noqa: E402
from lsp_exp.core.prompt_bound import check_texts, prompt_bound  # noqa: E402
from lsp_exp.rewards import RewardModelError, build_reward  # noqa: E402
from lsp_exp.run.instantiate import build  # noqa: E402
from lsp_exp.rl.challenger_objectives import check_objective  # noqa: E402
from lsp_exp.run.self_play import NonFiniteLossError, SelfPlayModule  # noqa: E402
from lsp_exp.core.conformance import check_architecture  # noqa: E402
from lsp_exp.core.special_tokens import ModelSetupError, check_chat_model  # noqa: E402
from lsp_exp.run.console import accuracy_line, progress_bar, say, where_to_look  # noqa: E402
from lsp_exp.run.run_end import end_run  # noqa: E402
from lsp_exp.run.tracking import build_logger, log_final_model, log_run_start, save_model, tracking_uri  # noqa: E402
from lsp_exp.run.tracking_failures import (ACTIVE_LOGGERS, TRACKING_ERRORS, ArtifactStoreError,  # noqa: E402
                                           TrackingLostError, TrackingUnreachableError, fail_active_runs, one_line)
from lsp_exp.run.validation import ConfigError, check_overrides, preflight, validate  # noqa: E402

warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
warnings.filterwarnings("ignore", message=".*litlogger.*")


class StepStream(IterableDataset):
    """An endless stream of step indices: each self-play step makes its own data."""

    def __iter__(self):
        step = 0
        while True:
            yield step
            step += 1


LAST_STEP: dict[str, float] = {}  # the figures of the last job's last step (what `objective` reads)


def train(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Run one training job; returns the held-out metrics by step."""
    LAST_STEP.clear()
    with interrupts_during_startup():
        return _train(cfg)


def _in_a_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def objective(cfg: DictConfig, history: dict[int, dict[str, float]]) -> float:
    """The value a sweeper optimises (`optimized_metric`): an `eval/<key>` of the last held-out
    evaluation, or a per-step figure (`train/...`, `perf/...`) of the last step; NaN, with a line
    saying so, when the run has no such figure."""
    key = cfg.get("optimized_metric") or "eval/accuracy"
    if key.startswith("eval/"):
        value = history[max(history)].get(key.removeprefix("eval/")) if history else None
    else:
        value = LAST_STEP.get(key)
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


def read_data(cfg: DictConfig, task, bound) -> tuple:
    """The task's held-out set and a data game's prompts (game=grpo_data), within `bound` when given;
    a malformed, empty or too long file is one line (ConfigError)."""
    task.prompt_bound = bound
    try:
        heldout = task.heldout()
    except ValueError as err:
        raise ConfigError(f"task ({cfg.task._target_}): {err}") from None
    try:
        prompts = None
        if not cfg.game.challenger:
            prompts = read_prompts(cfg.game.prompts_path, bound) if cfg.game.prompts_path else task.train_prompts()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return heldout, prompts


def check_data(bound, cfg: DictConfig, heldout, prompts) -> None:
    """The rows read before the model was built, against its bound (rows named by number)."""
    try:
        if heldout is not None:
            check_texts(bound, heldout.prompts, f"task.heldout_path={cfg.task.heldout_path!r}"
                        if cfg.task.get("heldout_path") else f"the held-out set of task {cfg.task._target_}")
        if prompts is not None:
            check_texts(bound, prompts, f"game.prompts_path={cfg.game.prompts_path!r}" if cfg.game.prompts_path
                        else f"the training prompts of task {cfg.task._target_}")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _train(cfg: DictConfig) -> dict[str, dict[str, float]]:
    requeued = cfg.get("resume") == "auto"  # a requeued job waits out its predecessor's last heartbeat (run_lock.py)
    cfg, resume, overrides = prepare_resume(cfg)  # resume=: the run's own config, its checkpoint and MLflow run
    validate(cfg)
    check_launch(cfg)  # how the ranks start (DDP in a multirun; FSDP refused)
    preflight(cfg)  # files the config names, the tracking server: before anything is built
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # hardware/tip chatter
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    # init_from first (a missing run, a corrupt folder): nothing is built before it is found
    init = resolve_init_from(cfg.init_from, tracking_uri(cfg), cfg.paths.outputs) if cfg.init_from else None
    task, loader = build(cfg.task, "task"), build(cfg.model, "model")
    # The data before any model is built or loaded. A model at hand (model.path, a full model to start
    # from, a base the task has built already) bounds a row while it is read: its tokenizer and context
    # (core/prompt_bound.py).
    full_init = init is not None and not is_adapter(init)
    at_hand = str(init) if full_init else (resolve_model_path(cfg.model, task) if cfg.model.get("path")
                                           else task.built_model())
    if at_hand:  # the estimated peak against the device's memory, before anything but its config is read
        check_memory(cfg, at_hand)
    tokenizer = loader.tokenizer(at_hand) if at_hand else None
    bound = prompt_bound(tokenizer, at_hand, cfg.game.max_answer_tokens) if at_hand else None
    heldout, prompts = read_data(cfg, task, bound)
    # Build (or find) the model first: a first-time bootstrap consumes the global RNG.
    model_path = str(init) if full_init else resolve_model_path(cfg.model, task)
    if tokenizer is None:  # a model the task built just now: it bounds the rows read (named by number)
        tokenizer = loader.tokenizer(model_path)
        check_data(prompt_bound(tokenizer, model_path, cfg.game.max_answer_tokens), cfg, heldout, prompts)
        check_memory(cfg, model_path)  # before any weight is loaded
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    policy = loader.policy(model_path, adapter=init if init is not None and is_adapter(init) else None).train()
    check_chat_model(policy, tokenizer, cfg.model.get("path") or cfg.model.name)  # a chat template and end ids
    # run on a few tokens: padding, the KV cache, training mode, the output layer (core/conformance.py)
    check_architecture(policy, tokenizer, cfg.model.get("path") or cfg.model.name)
    if output_layer(policy) is None:  # the check chose the logits path: the estimate counts the logits too
        check_memory(cfg, model_path, fused_head=False)
    if heldout is not None:
        heldout = heldout.head(cfg.eval.max_problems)
    reward = build_reward(cfg.reward, task=task)
    try:
        check_objective(cfg.game.challenger_objective, reward.bounds)
        game = build_game(cfg.game, task, prompts, cfg.seed)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    # Ground truth beside a proxy reward: the task's verifier, unless it is the reward itself.
    truth = task.ground_truth()
    verifier = truth if truth is not None and type(truth) is not type(reward) else None
    pairs = task.labelled_pairs(cfg.eval.judge_pairs) if cfg.eval.judge_pairs else None
    judge_template = cfg.game.judge.template if cfg.game.judge.template != "auto" else task.judge_template
    module = SelfPlayModule(cfg, policy, tokenizer, game, reward, heldout, verifier=verifier, labelled_pairs=pairs,
                            judge_template=judge_template)
    if resume is not None:  # before Lightning loads anything: a sharded run loads non-strictly
        check_checkpoint_keys(saved_weight_names(resume.path), module)
    module.answer_columns = task.answer_columns  # the sample tables' decoded / expected / correct columns
    module.query_metrics = task.query_metrics    # train/queries/*: what kinds of query the Challenger writes

    lock, stale = None, None
    if rank_zero_only.rank == 0 and resume is not None:  # one process per run: before the run is touched
        lock = RunLock(resume.path.parent)
        stale = lock.acquire(wait_s=lock.stale_s if requeued else 0.0)
    logger = build_logger(cfg) if rank_zero_only.rank == 0 else None  # only rank 0 touches the store
    if resume is None:
        log_run_start(logger, cfg)
    else:
        continue_run(logger, cfg, resume)
        if stale is not None:
            note_died(logger, stale, lock.path)
    run_id = logger.run_id if logger is not None else None
    ckpt_dir = checkpoint_dir(cfg, logger)
    if rank_zero_only.rank == 0 and lock is None:
        lock = RunLock(ckpt_dir)
        lock.acquire(wait_s=lock.stale_s if requeued else 0.0)
    checkpoints = StepCheckpoint(ckpt_dir, cfg.trainer.checkpoint_every, run_id, overrides, lock=lock)
    # precision: the module runs its own autocast (core/precision.py); Lightning's would wrap a whole step,
    # optimizer steps included, and serve stale weight casts to PPO's later inner epochs.
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, strategy=trainer_strategy(cfg.trainer),
        num_nodes=cfg.trainer.num_nodes, precision="32-true", max_steps=cfg.trainer.max_steps,
        logger=logger or False, log_every_n_steps=1, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=cfg.trainer.enable_progress_bar,
        callbacks=[checkpoints, *([progress_bar(cfg)] if cfg.trainer.enable_progress_bar else [])],
    )
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # from here on Lightning's handler: a checkpoint at the step's end
    try:
        with generation_settings(hf_generate=cfg.trainer.hf_generate, share_prefixes=cfg.trainer.share_prefixes,
                                 micro_batch_size=cfg.trainer.micro_batch_size,
                                 generation_batch_size=cfg.trainer.generation_batch_size):
            trainer.fit(module, train_dataloaders=DataLoader(StepStream(), batch_size=None),
                        ckpt_path=str(resume.path) if resume else None, weights_only=True)  # runs no code
    except SIGTERMException:  # SIGTERM or Ctrl-C: checkpoint written at the step's end; run KILLED; exit 143
        mark_interrupted(logger, checkpoints.last_path)
        raise SystemExit(143) from None
    finally:
        release_ranks(cfg)  # a multirun's next DDP job starts its own ranks
        if lock is not None:
            lock.release()
    LAST_STEP.update({k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1})
    if trainer.is_global_zero:  # the metrics, the final model, then FINISHED: each retried (run/run_end.py)
        end_run(logger, cfg.paths.outputs, lambda: log_final_model(
                    logger, policy, tokenizer, cfg.paths.outputs, state_dict=module.final_weights,
                    entry={"base_model": model_path, "dtype": cfg.model.get("dtype", "float32"),
                           "max_new_tokens": cfg.game.max_answer_tokens},
                    upload=cfg.logger.get("log_model", True)),
                save_locally=lambda folder: save_model(folder, policy, tokenizer, module.final_weights))
        report(module.eval_history, logger, module.judging)
    return module.eval_history


def report(history: dict[int, dict[str, float]], logger, judging: dict[str, float] | None = None) -> None:
    """The end of a run: how the reward and the judge classify correctness (measured at the start),
    the held-out result before and after, the run's name and a link that opens it in the UI."""
    for who in ("reward", "judge"):
        if f"{who}/f1" in (judging or {}):
            say(f"{who} as a classifier of correctness (at start): " + "  ".join(
                f"{k} {judging[f'{who}/{k}']:.3f}" for k in ("precision", "recall", "f1", "auc") if f"{who}/{k}" in judging))
    line = accuracy_line(history)
    if line:
        say(line)
    if logger is not None:
        model = getattr(logger, "model_id", None)
        say(f"MLflow run '{logger._run_name}' ({logger.run_id}) in experiment '{logger._experiment_name}'"
            + (f"; final model: mlflow.pyfunc.load_model('models:/{model}')" if model else ""))
        say(where_to_look(logger._tracking_uri, logger.experiment_id, logger.run_id))


# Failures with a message that says it all: one line on stderr, exit code 2, no traceback.
CLEAR_ERRORS = (ConfigError, ModelNotFoundError, ModelSetupError, CheckpointError, ResumeError, RunLockedError, FileNotFoundError, RewardModelError, InitFromError, UnsafeSavedStateError,
                TrackingUnreachableError, TrackingLostError, ArtifactStoreError, NonFiniteLossError, CheckpointMismatchError)


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
    from hydra.core.hydra_config import HydraConfig

    line = f"error: {job_label(HydraConfig.get())} failed: {line.removeprefix('error: ')}"
    say(line, err=True)
    return JobFailed(line)


@hydra.main(version_base="1.3", config_path=str(config.PROJECT_ROOT / "conf"), config_name="train")
def hydra_main(cfg: DictConfig) -> float | JobFailed | str:
    """One job; returns `optimized_metric`. Any exception ends its MLflow run FAILED with the error (tag
    `error`, `error.txt`); in a multirun a failed job returns `JobFailed` (run/sweep_jobs.py)."""
    ACTIVE_LOGGERS.clear()
    try:
        history = train(cfg)
    except CLEAR_ERRORS as err:
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
    value = objective(cfg, history)  # what a sweeper (hparams_search=..., Optuna) optimises
    if math.isnan(value) and _in_a_sweep():  # Optuna stops a study at NaN; a text fails only the trial
        return f"no {cfg.get('optimized_metric') or 'eval/accuracy'} in this run"
    return value


if __name__ == "__main__":
    main()
