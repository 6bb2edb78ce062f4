"""Structured config schemas: one dataclass per Hydra group, registered in Hydra's ConfigStore.

Every option YAML under `conf/<group>/` starts from its group's schema (`defaults: [schema]`), so
a misspelt key or a wrong type fails when the config is composed, with Hydra's own message.
A default is stated once: here, or in the option that sets it; an option states only what differs
from the schema or from the option it extends (`conf/game/lsp.yaml`: `defaults: [lsp_zero, _self_]`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, SI, OmegaConf

from lsp_exp.judge.parsing import MAX_SCORE


PROJECT_ROOT = Path(__file__).resolve().parents[2]

if not OmegaConf.has_resolver("lsp.root"):
    OmegaConf.register_new_resolver("lsp.root", lambda: str(PROJECT_ROOT))


@dataclass
class PathsConfig:
    root: str = "${lsp.root:}"
    outputs: str = "${paths.root}/outputs"


@dataclass
class JudgeSchema:
    """The self-quality judge of full LSP (docs/method.md §8): the frozen reference model with a rubric."""

    template: str = "auto"              # auto: the task's judge_template (judge/templates.py): toy_steps / toy for
    #                                     the toy worlds, the paper's rubric otherwise
    max_new_tokens: Optional[int] = None  # None: the template's own default (toy: 64, paper: 320)
    temperature: float = 0.0            # 0: greedy (the paper does not say)
    fallback_score: float = 0.0         # R_Q of a reply with neither a <Score> nor a <Calculation> (counted)
    score_from: str = "auto"            # auto: the template's (toy_steps: probabilities, text otherwise); text: the
    #                                     <Score> written; probabilities: E[score] over the digits


@dataclass
class BandSchema:
    """The Solver's difficulty band (docs/method.md §17.2): a valid query's answers enter the Solver's
    loss only when its value V is in [low, high] (open: (low, high)). R-Zero: 0.25-0.75; DAPO's dynamic
    sampling: open=true (drops the all-fail and all-succeed groups of a binary reward)."""

    low: Optional[float] = None         # None: the reward's lower bound (none for an unbounded reward)
    high: Optional[float] = None        # None: the reward's upper bound (none for an unbounded reward)
    open: bool = False                  # true: low < V < high; false: low <= V <= high (the default keeps all)


@dataclass
class ScheduleSchema:
    """R-Zero's alternating phases (docs/method.md §17.2): `challenger_steps` steps updating only the
    Challenger, then `solver_steps` updating only the Solver, and again; both roles play every step."""

    challenger_steps: int = 0           # both 0: both roles are updated every step
    solver_steps: int = 0


@dataclass
class GameSchema:
    name: str = MISSING
    queries: Any = None                 # the query source, a `_target_` node (lsp_exp/games/__init__.py)
    challenger: bool = True             # the Challenger writes the queries and is trained (False: grpo_data)
    n_queries: int = 8                  # N (grpo_data: prompts per step)
    group_size: int = 8                 # G (grpo_data: answers per prompt)
    task: str = "arithmetic"            # the toy Challenger prompt is the user turn "task: <task>"
    template: str = ""
    prompt: str = "auto"                # the Challenger's prompt: toy | paper | auto (the task's challenger_style)
    alpha_ch: float = 1.0               # not given in the paper (docs/method.md §11)
    self_reward: bool = False           # full LSP: add the judge's R_Q (docs/method.md §8)
    self_reward_weight: float = 1.0     # w in r_sol = R + w R_Q, r_ch = objective(V) + w V_Q (1 in the paper)
    judge: JudgeSchema = field(default_factory=JudgeSchema)
    invalid_query_value: Optional[float] = None  # V of an invalid query; None: the reward's upper bound (1 for the
    #                                     verifier), or the step's highest reward for an unbounded reward (0.0
    #                                     reproduces the collapse)
    challenger_objective: Any = "neg_value"  # the paper's -V; also uncertainty, learnability; or a `_target_` node
    #                                     with `_partial_: true`: a function V [N] -> [N] (rl/role_rewards.py)
    max_query_tokens: int = SI("${oc.select:task.max_query_tokens,12}")  # the task's query length (toy: 12,
    #                                     task=prompts: 256)
    max_answer_tokens: int = SI("${oc.select:task.max_answer_tokens,8}")  # the task's answer length (toy: 24
    #                                     worked, 8 direct; task=prompts: 512)
    temperature: float = 1.0
    prompts_path: Optional[str] = None  # grpo_data: a prompt file (core/prompts.py); None -> the task's training
    #                                     split (disjoint from the held-out set)
    # R-Zero (docs/method.md §17.2): r_ch = max(floor, f(V) + w V_Q - lambda r_rep), the band, the phases
    repetition_penalty: float = 0.0     # lambda; r_rep = the share of the step's queries in a query's BLEU cluster
    #                                     (rl/repetition.py); 0: off (R-Zero: 1)
    repetition_threshold: float = 0.5   # tau: clusters are cut at BLEU distance 1 - BLEU > tau (R-Zero: 0.5)
    challenger_reward_floor: Optional[float] = None  # r_ch = max(floor, .); None: no floor (R-Zero: 0)
    band: BandSchema = field(default_factory=BandSchema)
    schedule: ScheduleSchema = field(default_factory=ScheduleSchema)


@dataclass
class KLSchema:
    name: str = MISSING
    beta: float = 0.05                  # to the frozen initial model, both roles (the paper's beta)
    beta_challenger: Optional[float] = None  # per-role overrides; None -> beta
    beta_solver: Optional[float] = None
    estimator: str = "k1"               # k1 | k2 | k3 (per token, summed over the sequence)
    placement: str = "advantage"        # advantage (docs/method.md §7) | loss (the literal form) | reward
    controller: str = "fixed"           # fixed | adaptive (Ziegler et al. 2019; beta is the initial value)
    target: float = 1.0                 # adaptive: the target sequence KL per role
    horizon: float = 500.0              # adaptive: steps over which beta may change by ~20%


@dataclass
class AlgorithmSchema:
    """A named combination of pure functions from lsp_exp/rl (see rl/algorithms.py)."""

    name: str = MISSING
    advantage: Any = "group_mean"       # group_mean | group_std | rloo | batch_norm, or a `_target_` node
    #                                     (`_partial_: true`)
    policy_loss: Any = "reinforce_token"  # reinforce_token | clipped, or a `_target_` node (`_partial_: true`)
    aggregation: str = "seq_mean_token_sum"  # seq_mean_token_sum | seq_mean_token_mean | token_mean
    #                                     | seq_mean_token_sum_norm
    clip_low: float = 0.2               # ratio clipped to [1 - clip_low, 1 + clip_high] (policy_loss=clipped)
    clip_high: Optional[float] = None   # None: = clip_low (symmetric); e.g. 0.28 for DAPO's asymmetric epsilon_high
    epochs: int = 1                     # optimizer steps over one batch of playouts (PPO's inner epochs)


@dataclass
class HealthSchema:
    """Run health (lsp_exp/run/run_health.py): a condition under which no step can learn, held this
    many steps in a row, prints one line, tags the MLflow run (`health=...`) and is repeated at the end."""

    enabled: bool = True
    steps: int = 5                      # k: steps in a row (one bad step is noise; 5 is 1% of the default run)
    min_query_valid_frac: float = 0.1   # train/query_valid_frac below it: almost no valid query
    max_unfinished_frac: float = 0.9    # train/query_unfinished_frac or train/answer_unfinished_frac above it
    zero_std_frac: float = 1.0          # train/zero_std_frac at or above it (1: every group has zero reward spread)
    query_memory: int = 4096            # the last k queries train/collapse/seen_before_frac looks them up in
    #                                     (run/collapse.py:QueryMemory; 0: off)


@dataclass
class TrainerSchema:
    name: str = MISSING
    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_steps: int = 2000
    num_threads: Optional[int] = None   # torch intra-op threads; None: torch's default
    enable_progress_bar: bool = True
    max_consecutive_nonfinite: int = 20  # a NaN/inf loss skips its update (train/nonfinite_skips); this many
    #                                     in a row stop the run
    num_nodes: int = 1
    checkpoint_every: int = 500         # a checkpoint every k steps and at the last one (0: only on SIGTERM / Ctrl-C)
    checkpoint_dir: Optional[str] = None  # None -> <outputs>/checkpoints/<MLflow run id>
    hf_generate: bool = False           # sample with transformers' generate (the benchmark's baseline; slower)
    share_prefixes: bool = True         # log-prob passes run a prefix shared by rows once (exact; faster)
    micro_batch_size: Optional[int] = None  # rows per log-prob forward/backward pass (None: all N x G at once);
    #                                     the gradient is the same
    generation_batch_size: Optional[int] = None  # rows decoded at once (generation, the judge; None: all); set
    #                                     only if the KV cache does not fit
    health: HealthSchema = field(default_factory=HealthSchema)  # run health: trainer.health.* (run/run_health.py)


@dataclass
class LoggerSchema:
    name: str = MISSING
    tracking_uri: Optional[str] = None
    experiment_name: str = "lsp-exp"
    artifact_location: Optional[str] = None
    run_name: Optional[str] = None      # None: <game>-<algorithm>-s<seed>, e.g. lsp_zero-lsp-s1 (a sweep adds
    #                                     its other swept values; tracking.run_name); interpolations work
    log_model: bool = True              # the final model (LoRA: the adapter) as the run's model/ artifact and a
    #                                     logged model; false: kept under outputs/models/<run id>/model only (a
    #                                     full 3B model is ~6 GB)


@dataclass
class OptimSchema:
    lr: float = 3e-5                    # RL lr well below the SFT lr (1e-3): Adam at >= 1e-4 damages the base
    #                                     (docs/method.md §12)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    fused: bool = True                  # torch's fused AdamW kernel (CPU and GPU)


@dataclass
class EvalSchema:
    every_n_steps: int = 250
    samples: int = 8                    # k: sampled pass@1 / pass@k on the held-out set before and after
    #                                     training (0: greedy only)
    max_problems: Optional[int] = None
    sample_table_every: int = 250
    judge_pairs: int = 512              # labelled (query, answer, correct?) pairs to judge the judges at start (0: off)
    judge_threshold: float = 5.5        # a judge score above it predicts "correct" (precision/recall/F1)


@dataclass
class TrainSchema:
    seed: int = 0
    task: Any = MISSING                 # a `_target_` node (conf/task): its arguments are the task's business
    model: Any = MISSING                # a `_target_` node (conf/model): how the model is loaded
    game: GameSchema = MISSING
    reward: Any = MISSING               # a `_target_` node (conf/reward)
    kl: KLSchema = MISSING
    algorithm: AlgorithmSchema = MISSING
    trainer: TrainerSchema = MISSING
    logger: LoggerSchema = MISSING
    optim: OptimSchema = field(default_factory=OptimSchema)
    eval: EvalSchema = field(default_factory=EvalSchema)
    paths: PathsConfig = field(default_factory=PathsConfig)
    experiment: Optional[str] = None
    init_from: Optional[str] = None     # start from a run's final weights: a directory, a run id or
    #                                     filter:<MLflow filter> (run/chaining.py)
    resume: Optional[str] = None        # continue a run exactly: a checkpoint file or directory, or an MLflow run id
    trust_checkpoint_dir_tag: bool = False  # resume=<run id>: follow its `checkpoint_dir` tag outside paths.outputs
    tags: dict[str, str] = field(default_factory=dict)  # extra MLflow tags (e.g. an experiment's arm: +tags.arm=lsp)
    optimized_metric: str = "eval/accuracy"  # what lsp-train returns to a sweeper (hparams_search): eval/<key> at
    #                                     the end, or train/..., perf/... of the last step


@dataclass
class BootstrapConfigSchema:
    task: Any = MISSING
    model: Any = MISSING                # a `_target_` node (conf/model): how the model is loaded
    reward: Any = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    force: bool = False


@dataclass
class HeldoutEvalSchema:
    enabled: bool = True
    path: Optional[str] = None          # a prompt file with references; None -> the task's held-out set
    max_problems: Optional[int] = None
    samples: int = 0                    # k > 0: also sampled pass@1 / pass@k
    max_new_tokens: int = SI("${oc.select:task.max_answer_tokens,8}")  # the task's answer length (toy: 24
    #                                     worked, 8 direct)


@dataclass
class WinRateSchema:
    enabled: bool = True
    prompts_path: Optional[str] = None  # a prompt file (lsp_exp/core/prompts.py: plain or Alpaca/AlpacaEval);
    #                                     None -> the task's held-out set
    judge: str = "reward"               # reward: the `reward` group scores each answer; llm: the judge template
    #                                     on judge_model
    judge_template: str = "auto"        # llm judge: auto | paper | toy
    judge_model: Optional[str] = None   # llm judge: a model directory or cached hub id; None -> the base model
    tie_value: float = 0.5              # a tie counts this much of a win (0.5 AlpacaEval; 0 ties are not wins)
    margin: float = 0.0                 # a win needs a score above the base's by more than this
    max_prompts: Optional[int] = None
    max_new_tokens: int = SI("${oc.select:task.max_answer_tokens,8}")  # the task's answer length
    temperature: float = 0.0            # 0: greedy (the paper evaluates at 0.01)


@dataclass
class PerplexitySchema:
    enabled: bool = True
    path: Optional[str] = None          # rows with a reference (or a `text`); None -> held-out problems and
    #                                     their answers
    max_rows: Optional[int] = 500
    ngram: int = 3                      # n of the Kneser-Ney n-gram baseline (eval/perplexity_ngram; 0: off)


@dataclass
class EvalRunSchema:
    """`lsp-eval`: what to evaluate (`run`), against which base (`model`), judged by what (`reward`)."""

    run: Optional[str] = None           # None: the base model itself; a directory; an MLflow run id;
    #                                     filter:<expr> (each match)
    seed: int = 0
    task: Any = MISSING
    model: Any = MISSING                # a `_target_` node (conf/model): how the model is loaded
    reward: Any = MISSING
    logger: LoggerSchema = MISSING
    heldout: HeldoutEvalSchema = field(default_factory=HeldoutEvalSchema)
    win_rate: WinRateSchema = field(default_factory=WinRateSchema)
    perplexity: PerplexitySchema = field(default_factory=PerplexitySchema)
    diversity: bool = True              # distinct-n and self-BLEU of the run's Challenger queries (sample tables)
    char_level: Optional[bool] = None   # BLEU / ROUGE / diversity over characters; None: for toy models
    batch_size: int = 256
    num_threads: Optional[int] = None
    tags: dict[str, str] = field(default_factory=dict)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class ReportSchema:
    """`lsp-report`: which runs, grouped how, which metrics (lsp_exp/cli/report.py)."""

    tracking_uri: str = '${oc.env:MLFLOW_TRACKING_URI,"sqlite:///${paths.outputs}/mlflow.db"}'
    experiment_names: list[str] = field(default_factory=list)  # empty: every experiment
    parent_run: Optional[str] = None    # a sweep's parent run id: only its child runs
    filter: Optional[str] = None        # an MLflow filter, e.g. "tags.game = 'lsp'"
    group_by: list[str] = field(default_factory=lambda: ["tags.game"])  # tags.<tag> or a config key (game.name)
    metrics: list[str] = field(default_factory=lambda: ["eval/accuracy"])
    percent: list[str] = field(default_factory=lambda: ["eval/accuracy", "eval/win_rate"])  # shown x100
    curves: list[str] = field(default_factory=lambda: ["eval/accuracy"])
    order: list[str] = field(default_factory=list)  # groups listed first, in this order
    tail: int = 10                      # per-step metrics: the mean of a run's last `tail` values (1: the last)
    tail_prefixes: list[str] = field(default_factory=lambda: ["train/", "perf/"])  # which metrics are per step
    # running totals: the last value
    cumulative: list[str] = field(default_factory=lambda: ["train/tokens/", "train/nonfinite_skips"])
    smooth: int = 1                     # curves: a moving average over this many points (per-step train/* metrics)
    ci_level: float = 0.95              # the t-intervals' level: over a group's runs, and of each difference
    baseline: Optional[str] = None      # a group (e.g. base): adds each metric's difference from it, Welch's interval
    output_dir: str = "${paths.outputs}/reports/latest"
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass(frozen=True)
class Range:
    """The allowed values of one number: [low, high] (an end None: unbounded; `open_low` excludes
    low); null passes where the schema allows it. `why` replaces the generated message."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    why: str | None = None

    def message(self) -> str:
        if self.why:
            return self.why
        if self.high is not None:
            return f"must be in [{self.low:g}, {self.high:g}]"
        if self.open_low:
            return f"must be > {self.low:g}"
        return "must be at least 1" if self.low == 1 else f"must be >= {self.low:g}"

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high


# The range of every number of the framework's own groups, declared once: `run/validation.py`
# checks them all before anything is built, and tests/run/test_config.py fails when a numeric field
# of a schema has no entry here.
RANGES: dict[str, Range] = {
    "seed": Range(0, 2**32 - 1, why="must be in [0, 2**32 - 1] (numpy's seed range)"),
    "game.n_queries": Range(1, why="N must be at least 1"),
    "game.group_size": Range(2, why="G must be at least 2 for a group baseline"),
    "game.alpha_ch": Range(0),
    "game.self_reward_weight": Range(0),
    "game.judge.max_new_tokens": Range(1, why="must be at least 1 (or null for the template's default)"),
    "game.judge.temperature": Range(0, why="must be >= 0 (0: greedy)"),
    "game.judge.fallback_score": Range(0, MAX_SCORE),
    "game.invalid_query_value": Range(),
    "game.max_query_tokens": Range(1),
    "game.max_answer_tokens": Range(1),
    "game.temperature": Range(0, open_low=True),
    "game.repetition_penalty": Range(0),
    "game.repetition_threshold": Range(0, 1),
    "game.challenger_reward_floor": Range(),
    "game.band.low": Range(), "game.band.high": Range(),
    "game.schedule.challenger_steps": Range(0), "game.schedule.solver_steps": Range(0),
    "kl.beta": Range(0), "kl.beta_challenger": Range(0), "kl.beta_solver": Range(0),
    "kl.target": Range(0, open_low=True), "kl.horizon": Range(0, open_low=True),
    "algorithm.clip_low": Range(0, why="must be in [0, 1)"),
    "algorithm.clip_high": Range(0, why="must be >= 0 (or null)"),
    "algorithm.epochs": Range(1),
    "trainer.max_steps": Range(1),
    "trainer.num_threads": Range(1, why="must be at least 1 (or null for torch's default)"),
    "trainer.max_consecutive_nonfinite": Range(1),
    "trainer.num_nodes": Range(1),
    "trainer.micro_batch_size": Range(1, why="must be at least 1 row (or null: the whole batch in one pass)"),
    "trainer.generation_batch_size": Range(1, why="must be at least 1 row (or null: all rows at once)"),
    "trainer.checkpoint_every": Range(0, why="must be >= 0 (0: only on a signal)"),
    "trainer.health.steps": Range(1),
    "trainer.health.min_query_valid_frac": Range(0, 1),
    "trainer.health.max_unfinished_frac": Range(0, 1),
    "trainer.health.zero_std_frac": Range(0, 1),
    "trainer.health.query_memory": Range(0, why="must be >= 0 (0: no memory of queries)"),
    "optim.lr": Range(0, open_low=True),
    "optim.weight_decay": Range(0),
    "optim.grad_clip": Range(0, why="must be >= 0 (0 disables clipping)"),
    "eval.every_n_steps": Range(0),
    "eval.samples": Range(0),
    "eval.max_problems": Range(1, why="must be at least 1 (or null for all)"),
    "eval.sample_table_every": Range(0, why="must be >= 0 (0: never)"),
    "eval.judge_pairs": Range(0),
    "eval.judge_threshold": Range(0, MAX_SCORE),
}
NOT_RANGED = {"trainer.devices", "optim.betas"}  # checked by their own rules (a list, or 'auto')


GROUP_SCHEMAS = {  # the framework's own groups: strict (task, model and reward are `_target_` nodes)
    "game": GameSchema, "kl": KLSchema,
    "algorithm": AlgorithmSchema, "trainer": TrainerSchema, "logger": LoggerSchema,
}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainSchema)
    cs.store(name="bootstrap_schema", node=BootstrapConfigSchema)
    cs.store(name="eval_schema", node=EvalRunSchema)
    cs.store(name="report_schema", node=ReportSchema)
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(group=group, name="schema", node=schema)


register_configs()
