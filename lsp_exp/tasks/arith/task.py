"""The toy arithmetic world as a task (`task=arith`): a base model it builds (`lsp-bootstrap`), the
verifier as ground truth, the held-out split with exact-match scoring and per-slice metrics, the
training split for the data game, and labelled pairs to judge the judges.

Its config (`conf/task/arith.yaml`) is checked against `ArithWorld` and `ArithBootstrap` when the
task is built: a misspelt key or a wrong type stops the run with one line naming it.
"""
from __future__ import annotations

from pathlib import Path

from lsp_exp.nodes import checked
from lsp_exp.tasks.arith.build import build_toy_world, is_complete, toy_world_dir, world_config
from lsp_exp.tasks.arith.config import ArithBootstrap, world_node
from lsp_exp.tasks.arith.data import read_problems
from lsp_exp.tasks.arith.judge_data import labelled_pairs
from lsp_exp.tasks.arith.verifier_reward import ArithmeticReward
from lsp_exp.tasks.arith.answers import FORMATS, answer_value, heldout_slices, reference_answer
from lsp_exp.tasks.arith.world import DEFAULT_WORLD, DIFFICULTIES, FLAWS, Problem, WorldConfig, parse_problem
from lsp_exp.tasks.base import HeldoutSet, Task


class ArithTask(Task):
    name = "arith"
    challenger_style = "toy"
    char_level = True

    def __init__(self, world=None, bootstrap=None, outputs: str = "outputs", heldout_path: str | None = None,
                 challenger_style: str = "toy", max_answer_tokens: int | None = None,
                 self_reward_weight: float | None = None):
        self.world = world_node(world)
        self.bootstrap = checked(ArithBootstrap, bootstrap, "task.bootstrap")
        self.outputs, self.heldout_path, self.challenger_style = str(outputs), heldout_path, challenger_style
        # the games read `task.max_answer_tokens` and `task.self_reward_weight` (full LSP's w) from the config;
        # the task keeps the answer length for lsp-bootstrap's evaluation
        self.max_answer_tokens = max_answer_tokens or (24 if world_node(world).answer_format == "steps" else 8)
        w = self.world
        _require(w.flaw in FLAWS, "task.world.flaw", w.flaw, f"unknown; available: {', '.join(FLAWS)}")
        _require(w.answer_format in FORMATS, "task.world.answer_format", w.answer_format,
                 f"unknown; available: {', '.join(FORMATS)}")
        for key in ("chain_flaw_rate", "sign_slip_rate"):
            _require(0 <= w[key] <= 1, f"task.world.{key}", w[key], "must be in [0, 1]")
        if w.answer_format == "direct":
            _require(w.share_chain == 0 and w.chain_flaw_rate == 0 and w.sign_slip_rate == 0,
                     "task.world.answer_format", w.answer_format,
                     "the chain class and sign slips need answer_format=steps")
        _require(0 <= w.flaw_rate <= 1, "task.world.flaw_rate", w.flaw_rate, "must be in [0, 1]")
        for key in ("max_operand", "max_small_operand"):
            _require(w[key] >= 1, f"task.world.{key}", w[key], "must be at least 1")
        shares = (w.share_one_op, w.share_two_op, w.share_precedence, w.share_chain)
        _require(min(shares) >= 0 and abs(sum(shares) - 1) < 1e-6, "task.world.share_one_op", w.share_one_op,
                 "the shares of one_op, two_op, precedence and chain must be >= 0 and sum to 1")
        if w.train_shares is not None:
            train = list(w.train_shares)
            _require(len(train) == 4 and min(train) >= 0 and abs(sum(train) - 1) < 1e-6, "task.world.train_shares",
                     train, "four shares (one_op, two_op, precedence, chain), each >= 0, summing to 1")
            _require(train[3] == 0 or w.share_chain > 0, "task.world.train_shares", train,
                     "a chain share needs a world with share_chain > 0")
        _require(w.n_heldout >= 1 and w.n_train >= 1, "task.world.n_heldout", w.n_heldout,
                 "n_heldout and n_train must be at least 1")
        self.config = world_config(self.world)  # the WorldConfig the world's functions take

    @property
    def judge_template(self) -> str:
        """The judge's template: `toy_steps` for worked answers, `toy` for the first world."""
        return "toy_steps" if self.world.answer_format == "steps" else "toy"

    @property
    def directory(self) -> Path:
        """Where the built world is cached (outputs/toy_world/<key>)."""
        return toy_world_dir(self.world, self.bootstrap, self.outputs)

    def base_model(self, force: bool = False) -> str:
        return str(build_toy_world(self.world, self.bootstrap, self.outputs, force=force) / "model")

    def built_model(self) -> str | None:
        return str(self.directory / "model") if is_complete(self.directory) else None

    def problems(self, split: str) -> list[Problem]:
        """`heldout` (or `task.heldout_path`) or `train` problems of the built world."""
        if split == "heldout" and self.heldout_path:
            return read_problems(self.heldout_path, self.prompt_bound)
        path = build_toy_world(self.world, self.bootstrap, self.outputs)
        return read_problems(path / "data" / f"{split}.jsonl", self.prompt_bound)

    def heldout(self) -> HeldoutSet:
        return heldout_set(self.problems("heldout"), self.config)

    def train_prompts(self) -> list[str]:
        return [p.text for p in self.problems("train")]

    def train_references(self) -> list[str]:
        return [reference_answer(p, self.config) for p in self.problems("train")]

    def ground_truth(self) -> ArithmeticReward:
        return ArithmeticReward(self.config)

    def answer_columns(self, queries: list[str], answers: list[str]) -> dict[str, list]:
        """`decoded`: the value the answer states, read back from its reversed-digit notation ('41' -> 14;
        the last step's result of a worked answer; None when it is not a well-formed answer); `expected`:
        the query's true value (None outside the world: an invalid query); `correct`: whether they agree
        (None without an expected value)."""
        decoded = [answer_value(a, self.config) for a in answers]
        problems = [parse_problem(q.strip(), self.config) for q in queries]
        expected = [p.answer if p is not None else None for p in problems]
        return {"decoded": decoded, "expected": expected,
                "correct": [None if e is None else d == e for d, e in zip(decoded, expected, strict=True)]}

    def query_metrics(self, queries: list[str]) -> dict[str, float]:
        """`<class>_frac`: the share of the step's queries in each class of the world (one_op, two_op,
        precedence, chain where the world has it); invalid queries count in none of them."""
        problems = [parse_problem(q.strip(), self.config) for q in queries]
        classes = DIFFICULTIES if self.config.share_chain > 0 else DIFFICULTIES[:3]
        n = max(1, len(queries))
        return {f"{c}_frac": sum(p is not None and p.difficulty == c for p in problems) / n for c in classes}

    def final_answer(self, answer: str) -> int | None:
        """The value the answer states (the last step's result of a worked answer); None when it is
        not a well-formed answer (`reward=majority_vote` votes on it)."""
        return answer_value(answer, self.config)

    def query_slices(self, queries: list[str]) -> list[list[str]]:
        """Each query's held-out slices (difficulty, flawed or unflawed, which flaw); [] outside the world."""
        slices = heldout_slices(self.config)
        problems = [parse_problem(q.strip(), self.config) for q in queries]
        return [slices(p) if p is not None else [] for p in problems]

    def labelled_pairs(self, n: int) -> list[tuple[str, str, bool]]:
        return labelled_pairs(self.problems("heldout"), self.config, n, self.world.seed)


def heldout_set(problems: list[Problem], config: WorldConfig = DEFAULT_WORLD) -> HeldoutSet:
    """Problems as a HeldoutSet: exact match of the stated value; slices: difficulty, flawed or not (answers.py)."""
    slices = heldout_slices(config)
    return HeldoutSet([p.text for p in problems], lambda i, text: answer_value(text, config) == problems[i].answer,
                      [slices(p) for p in problems], [reference_answer(p, config) for p in problems])


def _require(ok: bool, key: str, value, message: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r}: {message}")
