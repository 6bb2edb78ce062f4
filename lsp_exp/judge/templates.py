"""Judge prompt templates (docs/method.md §8): the user turn that asks the reference model for a score.

- `paper`: the additive 0-7 rubric of the paper's Box 3, in this project's own words, for real
  instruction-tuned models;
- `toy`: a compact form the toy world's tiny model was trained to read (`lsp-bootstrap`);
- `toy_steps`: the same prompt for the worked-steps world, whose judge writes a short check of the
  steps and the score (tasks/arith/steps_judge.py); the score is read from the probabilities of
  the score digits after `<Score>` (as G-Eval reads a judge), a graded score without sampling noise.
`paper` and `toy` ask for a justification, a `<Calculation>` and a `<Score>`; `parsing.py` reads them.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JudgeTemplate:
    name: str
    text: str                 # str.format fields: {instruction}, {response}
    max_new_tokens: int       # enough for the justification, the calculation and the score
    score_from: str = "text"  # text: the <Score> the judge wrote; probabilities: E[score] over the digits after <Score>

    def render(self, instruction: str, response: str) -> str:
        # str.format does not re-interpret braces inside the substituted values, so model text
        # containing "{...}" is inserted verbatim.
        return self.text.format(instruction=instruction, response=response)


PAPER_RUBRIC = """Review the interaction below between a user and an AI assistant: the user's instruction \
and the assistant's response. Grade it on an additive 7-point scale: start from 0 and add 1 point \
for each of the following statements that holds.
1. The task the user wants done can clearly be identified from the instruction.
2. The instruction is clear, specific and well structured.
3. The user will clearly be able to understand the response.
4. The response addresses a substantial part of the question, even if not all of it.
5. The response answers the core of the question in a useful and thorough way.
6. The response is clearly written, concise, well organised and helpful.
7. The user will most likely like the form and style of the response.

<Instruction>{instruction}</Instruction>

<Response>{response}</Response>

Reply in exactly this format:
- first, a short justification of at most 100 words;
- then the sum of the seven points inside <Calculation></Calculation>, for example \
<Calculation>1+0+1+1+0+1+0=4</Calculation>; check the arithmetic carefully;
- finally the total, an integer from 0 to 7, inside <Score></Score>, for example <Score>4</Score>. \
The format matters: a reply without the <Score> tag cannot be used."""

TOY_RUBRIC = "judge: <Instruction>{instruction}</Instruction><Response>{response}</Response>"

TEMPLATES = {
    "paper": JudgeTemplate("paper", PAPER_RUBRIC, max_new_tokens=320),
    "toy": JudgeTemplate("toy", TOY_RUBRIC, max_new_tokens=64),
    "toy_steps": JudgeTemplate("toy_steps", TOY_RUBRIC, max_new_tokens=40, score_from="probabilities"),
}


def get_template(name: str) -> JudgeTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown judge template {name!r}; available: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]
