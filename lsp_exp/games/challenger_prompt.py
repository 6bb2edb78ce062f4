"""The Challenger's user turn: a short task line, or the paper's four-part prompt.

`game.prompt`: `toy` (`task: <task>`, what the toy model was trained on), `paper` (docs/method.md §1; the paper's
Box 1: Background, Request, Details, Final Remarks, in this project's own words), or `auto` (the
task's `challenger_style`: toy for the arithmetic task, paper otherwise). `{task}` and `{template}` come from
`game.task` and `game.template`; both empty selects the prompt's "use your best judgment" branch, which is
what the paper's instruction-following runs appear to use.
"""
from __future__ import annotations


def challenger_user_turn(task: str, template: str = "") -> str:
    """The short Challenger prompt: `task: <task>` (and `template: <template>`), one fixed user turn."""
    return f"task: {task}" + (f" template: {template}" if template else "")

PROMPTS = ("auto", "toy", "paper")

PAPER_PROMPT = """<ChallengerPrompt>
Background: a language task pairs an input with an output, and a language agent's job is to produce the output for a given input. Two illustrations: in question answering the input is a question and the output its answer; in title writing the input is an essay and the output a title for it.

Request: write one input for the language task '{task}'. Another language agent will receive it, so your reply must itself be a valid input for that task. It may be easy, of intermediate difficulty, hard, or even noisy; aim to stress-test the agent and to make it think beyond the obvious. Write exactly one input.

Details: the input must follow the template between [Start Generation] and [End Generation]: [Start Generation]'{template}'[End Generation]. Copy the template without the tags and replace every placeholder in curly braces with content of your own; for example, a placeholder {{ice cream flavor}} becomes the name of a flavour.

Final remarks: give no output, answer, hint or other leaked information with the input. Do not ask for anything a language agent cannot do. Stop as soon as the template is filled, and do not write the [Start Generation] or [End Generation] tags. Follow the template strictly. If the task and the template are both None or empty, write an input using your best judgment.

Now write a single input for the task '{task}' that follows the template.
</ChallengerPrompt>"""  # noqa: E501 (one paragraph a line: the model reads the prompt as written here)


def challenger_prompt(style: str, task: str, template: str) -> str:
    """The Challenger's user turn in `style` (`toy` or `paper`)."""
    if style == "toy":
        return challenger_user_turn(task, template)
    if style == "paper":
        return PAPER_PROMPT.format(task=task or "None", template=template or "None")
    raise ValueError(f"game.prompt={style!r}: unknown; available: {', '.join(PROMPTS)}")
