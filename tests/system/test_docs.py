"""Docs that cannot rot silently: every relative link and every repository path named in the
Markdown files exists (anchors included), nothing points outside the repository, and every
`lsp-train` command the README shows composes (and passes the range checks)."""
from __future__ import annotations

import ast
import re
import shlex
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from lsp_exp.nodes import build
from lsp_exp.rewards import build_reward
from lsp_exp.run.config import PROJECT_ROOT
from lsp_exp.run.validation import validate
from lsp_exp.tasks.base import Task

from tests.helpers.tiny_run import compose_config

DOCS = sorted([PROJECT_ROOT / "README.md", *(PROJECT_ROOT / "docs").glob("*.md"),
               *(PROJECT_ROOT / "experiments").rglob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PATH = re.compile(r"`((?:lsp_exp|conf|tests|experiments|docs)/[\w./-]*\w)(?::[\w.]+)?`")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"(?m)^#+\s+(.*)$", text)}


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(PROJECT_ROOT)) for d in DOCS])
def test_every_relative_link_and_named_path_exists(doc):
    text = doc.read_text()
    broken = []
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        resolved = (doc.parent / file).resolve() if file else doc
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no such heading)")
    for path in PATH.findall(text):
        if not any(c in path for c in "<*{") and not (PROJECT_ROOT / path).exists():
            broken.append(f"`{path}`")
    assert not broken, broken


def test_nothing_points_outside_the_repository():
    """Every Markdown file a source, config or doc names (`<name>.md`) is a file of the
    repository, and nothing reaches above it into a sibling folder (`../<folder>/`): a user who
    clones the repository can follow every reference."""
    def ours(p):  # not in a hidden folder (.git, virtual environments such as .venv-bench) or outputs
        parts = p.relative_to(PROJECT_ROOT).parts
        return not any(part.startswith(".") or part == "outputs" for part in parts[:-1])

    names = {p.name for p in PROJECT_ROOT.rglob("*.md") if ours(p)}
    files = [p for p in PROJECT_ROOT.rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".yaml", ".sh", ".toml"}
             and ours(p)]
    outside = []
    for path in files:
        text = path.read_text()
        outside += [f"{path.relative_to(PROJECT_ROOT)}: {name}" for name in
                    re.findall(r"(?<![\w/.-])([\w-]+\.md)\b", text) if name not in names]
        if path.parent == PROJECT_ROOT:  # a top-level file: `../` leaves the repository
            outside += [f"{path.name}: {m}" for m in re.findall(r"\]\((\.\./[^)]*)\)", text)]
    assert outside == []


def readme_commands() -> list[str]:
    """Every `lsp-train` line of the README's code blocks (a sweep's lists: their first values)."""
    blocks = re.findall(r"```bash\n(.*?)```", (PROJECT_ROOT / "README.md").read_text(), flags=re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if re.match(r"(\.venv/bin/)?lsp-train\b", line) and "..." not in line]


def first_of_each_sweep(args: list[str]) -> list[str]:
    out = []
    for arg in args:
        if arg in ("-m", "--multirun", "--cfg", "job"):
            continue
        override = OverridesParser.create().parse_overrides([arg])[0]
        if override.is_sweep_override():
            arg = f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}"
        out.append(arg)
    return out


COMMANDS = readme_commands()


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 10


@pytest.fixture
def readme_examples(tmp_path, monkeypatch):
    """The README's example files (code blocks that start with `# <file>.py` or `# my_conf/<file>.yaml`),
    written out: the package on sys.path, the config directory returned."""
    text = (PROJECT_ROOT / "README.md").read_text()
    for _kind, body in re.findall(r"```(python|yaml)\n(.*?)```", text, flags=re.S):
        first = body.splitlines()[0]
        match = re.fullmatch(r"# (my_conf/[\w/]+\.yaml|\w+\.py)(:.*)?", first.strip())
        if match:
            target = tmp_path / match.group(1)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path / "my_conf"
    for name in ("my_rewards", "reverse_task", "my_algos", "my_baselines"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_composes(command, readme_examples):
    """Commands that use the Extending section's config directory get the README's own examples."""
    command = command.replace("file:///path/to/my_conf", f"file://{readme_examples}")
    overrides = first_of_each_sweep(shlex.split(command)[1:])
    validate(compose_config("train", overrides))


def test_the_readme_extension_examples_compose(readme_examples):
    names = {p.relative_to(readme_examples).as_posix() for p in readme_examples.rglob("*.yaml")}
    assert names >= {"reward/brevity.yaml", "reward/checked.yaml", "task/reverse.yaml",
                     "algorithm/scaled.yaml", "algorithm/median.yaml"}   # (and the other sections' examples)
    cfg = compose_config("train", [f"hydra.searchpath=[file://{readme_examples}]", "reward=brevity",
                                   "task=reverse", "algorithm=scaled"])
    validate(cfg)   # every `_target_` imports
    assert cfg.algorithm.advantage.scale == 2.5 and cfg.reward.max_chars == 1


def test_the_readme_stateful_estimator_is_one_per_role_and_carries_its_state(readme_examples):
    """The README's running median, from its YAML as a run builds it: one estimator per role, hand values
    over two steps (the baseline counts this step's mean), and a state that continues after a reload."""
    import torch

    from lsp_exp.rl.advantages import is_stateful
    from lsp_exp.rl.algorithms import algorithm_spec

    cfg = compose_config("train", [f"hydra.searchpath=[file://{readme_examples}]", "algorithm=median"])
    validate(cfg)
    spec = algorithm_spec(cfg.algorithm, build)
    solver, challenger = spec.role_estimator(), spec.role_estimator()
    assert type(solver).__name__ == "RunningMedian" and solver is not challenger and solver.window == 10
    assert is_stateful(solver)
    valid = torch.tensor([[True] * 3, [False] * 3])
    torch.testing.assert_close(solver(torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]), valid),
                               torch.tensor([[1 / 3, -2 / 3, 1 / 3], [0.0, 0.0, 0.0]]))   # the median of [2/3]
    # means [2/3, 1]: torch's median of an even count is the lower middle, 2/3
    torch.testing.assert_close(solver(torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool)), torch.full((1, 2), 1 / 3))
    assert challenger.baseline is None and challenger.means == []
    resumed = spec.role_estimator()
    resumed.load_state_dict(solver.state_dict())
    step3 = torch.tensor([[0.0, 0.5]]), torch.ones(1, 2, dtype=torch.bool)
    assert torch.equal(resumed(*step3), solver(*step3)) and resumed.baseline == solver.baseline


def test_the_readme_task_example_is_a_task_as_written(readme_examples):
    """The README's task, built from its YAML as a run builds it, answers the questions a run asks:
    its held-out set, its training prompts and its verifier, which grades a (query, answer) pair."""
    cfg = compose_config("train", [f"hydra.searchpath=[file://{readme_examples}]", "task=reverse",
                                   "reward=ground_truth"])
    task = build(cfg.task, "task")
    assert type(task).__name__ == "ReverseTask" and isinstance(task, Task) and task.outputs == cfg.paths.outputs
    heldout = task.heldout()
    assert heldout.prompts == ["Reverse: fox", "Reverse: tree"] and heldout.slices == [["len3"], ["len4"]]
    assert heldout.is_correct(0, " xof") and not heldout.is_correct(1, "tree")
    assert task.train_prompts() == ["Reverse: cat", "Reverse: sun", "Reverse: fish"]
    truth = build_reward(cfg.reward, task=task)   # reward=ground_truth: the task's verifier, the README's class
    scores = truth.score(["Reverse: cat", "Reverse: cat", "Reverse: 42"], ["tac", "cat", "24"])
    assert scores.values.tolist() == [1.0, 0.0, 0.0] and scores.valid.tolist() == [True, True, False]
    assert type(truth).__name__ == "Reversed" and truth.bounds == (0.0, 1.0)


def test_the_readme_composite_reward_weighs_its_three_kinds_of_part(readme_examples, tmp_path):
    """The README's composite on the toy task: the task's verifier (a target that takes the task),
    the shipped tiny reward model (a reward object) and the README's brevity (a plain function)."""
    cfg = compose_config("train", [f"hydra.searchpath=[file://{readme_examples}]", "reward=checked",
                                   f"paths.outputs={tmp_path}"])
    reward = build_reward(cfg.reward, task=build(cfg.task, "task"))
    assert reward.bounds == pytest.approx((0.0, 1.6))
    scores = reward.score(["3+4", "3+4"], ["x", "a long wrong answer"])   # both wrong; the first is short
    parts = {name: values.tolist() for name, values in scores.parts.items()}
    assert parts["truth"] == [0.0, 0.0] and parts["brevity"] == [1.0, 0.0] and scores.valid.tolist() == [True, True]
    expected = [0.5 * rm + 0.1 * short for rm, short in zip(parts["tiny_rm"], parts["brevity"], strict=True)]
    assert scores.values.tolist() == pytest.approx(expected) and all(0 < rm < 1 for rm in parts["tiny_rm"])


CODE_REF = re.compile(r"`((?:lsp_exp|experiments|tests|tools)/[\w/]+\.py):([\w.]+)`")


def defined_names(path: Path) -> set[str]:
    """The names a module defines: its functions, classes (and `Class.method`) and module-level
    assignments (registries, constants)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{n.name}" for n in node.body
                          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.AnnAssign, ast.Assign))
                          and hasattr(n, "name")}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def method_table_refs() -> list[tuple[str, str]]:
    """(file, name) of every `file.py:name` in the docs, and in docs/method.md's formula -> code table
    also the bare `name`s that follow one in its code column (they name the same file)."""
    refs = [(f, n) for doc in DOCS for f, n in CODE_REF.findall(doc.read_text())]
    for row in re.findall(r"(?m)^\|.*\|\s*$", (PROJECT_ROOT / "docs" / "method.md").read_text()):
        code = row.strip().strip("|").split("|")[-1]
        current = None
        for token in re.findall(r"`([^`]+)`", code):
            match = re.fullmatch(r"((?:lsp_exp)/[\w/]+\.py)(?::([\w.]+))?", token)
            if match:
                current = match.group(1)
            elif current and re.fullmatch(r"[A-Za-z_][\w.]*", token):
                refs.append((current, token))
    return sorted(set(refs))


@pytest.mark.parametrize("file,name", method_table_refs(), ids=lambda v: v)
def test_every_named_function_exists(file, name):
    """docs name code as `path.py:function` (docs/method.md's formula -> code table above all):
    the function, class or method is defined in that file."""
    path = PROJECT_ROOT / file
    assert path.is_file(), file
    assert name in defined_names(path), f"{file} defines no {name}"
