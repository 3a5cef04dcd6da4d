"""Prompt and response format: statement -> prompt text, response text -> program source.

Two prompt formats:

- **chat**: when the tokenizer has a chat template (instruction models), the statement goes into
  one user message asking for a Python 3 program that reads standard input, and the template's
  generation prompt is appended. Generation stops at the model's end-of-turn / eos token.
- **plain**: otherwise (base models, and the embedded tiny ``pi_0``, which is trained on exactly
  this), :data:`PLAIN_TEMPLATE` below. The response is expected to be one fenced block
  ``"```python\\n<code>\\n```"`` starting at the first character, so the first ``"\\n```"`` of the
  response closes it: :data:`STOP_STRINGS` stops there (the eos token stops it too).

Prompts carry their own special tokens (the bos token, or whatever the chat template writes):
encode them with ``add_special_tokens=False``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

USER_INSTRUCTION = (
    "Solve the following programming problem. Write a complete Python 3 program that reads "
    "the input from standard input and writes the answer to standard output. Put the whole "
    "program in a single ```python code block.\n\n{statement}"
)
PLAIN_TEMPLATE = "{bos}### Problem\n{statement}\n### Python 3 solution\n"
"""The plain prompt; ``{bos}`` is the tokenizer's bos token text ('' when it has none)."""

FENCE_OPEN = "```python\n"
FENCE_CLOSE = "\n```"
STOP_STRINGS: tuple[str, ...] = (FENCE_CLOSE,)
"""Stop strings of the plain format: the end of the (single) fenced block."""

PYTHON_FENCE_LANGS = frozenset({"python", "python3", "py", "py3", "python 3"})


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


CALL_INSTRUCTION = (
    "Solve the following programming problem. Write Python 3 code defining the function "
    "`{fn_name}` (a top-level function, or a method of class Solution); it is called with "
    "each test's arguments and its return value is checked, so do not read standard input. "
    "Put the whole code in a single ```python code block.\n\n{statement}"
)
CALL_SECTION = (
    "\n\nComplete this code: the judge calls `{fn_name}` with each test's arguments and "
    "compares its return value (no standard input).\n```python\n{starter}\n```"
)
"""Appended to a call-based problem's statement (TACO `fn_name`): without the signature a
model writes a stdin program that can never pass (docs/judge.md, call-based problems)."""


def build_prompt(
    statement: str, tokenizer, *, fn_name: str | None = None, starter_code: str | None = None
) -> str:
    """The prompt text for ``statement`` (chat template when the tokenizer has one, else plain).

    For a call-based problem (``fn_name``, TACO) the prompt shows the function to write: the
    dataset's ``starter_code`` when it has one, else ``def {fn_name}(...):``; the chat
    instruction asks for that function instead of a stdin program.
    """
    statement = statement.strip("\n")
    if fn_name:
        starter = (starter_code or "").strip("\n") or f"def {fn_name}(*args):\n    ..."
        statement += CALL_SECTION.format(fn_name=fn_name, starter=starter)
    if has_chat_template(tokenizer):
        instruction = CALL_INSTRUCTION if fn_name else USER_INSTRUCTION
        content = instruction.format(statement=statement, fn_name=fn_name)
        messages = [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None) or ""
    return PLAIN_TEMPLATE.format(bos=bos, statement=statement)


def problem_prompt(problem: Mapping[str, Any], tokenizer) -> str:
    """`build_prompt` for a `problems` row (needs `statement`; uses `fn_name` and the
    `starter_code` kept in its `extra` JSON when present)."""
    extra = problem.get("extra")
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            extra = None
    starter = extra.get("starter_code") if isinstance(extra, dict) else None
    return build_prompt(
        problem["statement"],
        tokenizer,
        fn_name=problem.get("fn_name") or None,
        starter_code=starter if isinstance(starter, str) else None,
    )


def stop_strings_for(tokenizer) -> tuple[str, ...]:
    """Stop strings to use with this tokenizer's prompt format (eos always stops as well)."""
    return () if has_chat_template(tokenizer) else STOP_STRINGS


def format_response(code: str) -> str:
    """The plain-format response for ``code`` (the SFT target; eos follows it)."""
    return FENCE_OPEN + code.strip("\n") + FENCE_CLOSE


@dataclass(frozen=True)
class CodeBlock:
    lang: str  # lower-cased info string ('' for a bare fence)
    code: str
    closed: bool


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*(?:\s+3)?)[^`]*$")


def fenced_blocks(text: str) -> list[CodeBlock]:
    """Every fenced code block of ``text`` in order (a last unterminated one has closed=False)."""
    blocks: list[CodeBlock] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).strip().lower()
        body: list[str] = []
        i += 1
        closed = False
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                closed = True
                i += 1
                break
            body.append(lines[i])
            i += 1
        blocks.append(CodeBlock(lang=lang, code="\n".join(body), closed=closed))
    return blocks


def _is_python(lang: str) -> bool:
    return lang.replace(" ", "") in {x.replace(" ", "") for x in PYTHON_FENCE_LANGS}


def extract_code(response: str) -> str:
    """The program in a model's response.

    In order of preference: the last closed fenced block labelled Python (``python``,
    ``python3``, ``py``, ``py3``, any case); else the last unterminated Python block (a response
    cut at max_new_tokens); else the first block with a bare fence (closed, else unterminated);
    else the whole response, stripped, without stray fence lines. The code is returned with
    surrounding blank lines removed and a final newline.
    """
    blocks = fenced_blocks(response)
    python = [b for b in blocks if _is_python(b.lang)]
    bare = [b for b in blocks if b.lang == ""]
    chosen: CodeBlock | None = None
    if any(b.closed for b in python):
        chosen = [b for b in python if b.closed][-1]
    elif python:
        chosen = python[-1]
    elif any(b.closed for b in bare):
        chosen = [b for b in bare if b.closed][0]
    elif bare:
        chosen = bare[0]
    if chosen is not None:
        code = chosen.code
    else:
        code = "\n".join(line for line in response.split("\n") if not _FENCE.match(line))
    code = code.strip("\n")
    return code + "\n" if code.strip() else ""


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt built by :func:`build_prompt` (no special tokens added)."""
    return [int(t) for t in tokenizer(prompt, add_special_tokens=False)["input_ids"]]


def response_text(response: str) -> str:
    """``response`` as the model would write it: bare code is put in a ```python block."""
    if fenced_blocks(response):
        return response
    return format_response(response)


def encode_response(tokenizer, response: str, finish_reason: str | None = None) -> list[int]:
    """Token ids of a response as a generator would have produced them.

    - ``finish_reason=None`` (text that was not sampled: a human solution, offline text): bare
      code is first wrapped by :func:`format_response`; the eos token is appended unless a stop
      string of this tokenizer's format ends the text (generation stops there without sampling
      eos, see :func:`stop_strings_for`).
    - ``"stop"`` (or any other reason: sampled, ended by eos or a stop string): the text as
      sampled, never wrapped;
      eos appended unless a stop string is in it (the generator's text drops the eos token).
    - ``"length"`` (sampled, cut at max_new_tokens): the text as sampled and **no** eos: the
      model never generated one, and training on it would teach an end that was not there.
    """
    text = response_text(response) if finish_reason is None else response
    ids = [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    if finish_reason == "length":
        return ids
    stops = stop_strings_for(tokenizer)
    if any(s in text for s in stops):
        return ids
    eos = getattr(tokenizer, "eos_token_id", None)
    return ids + [int(eos)] if eos is not None else ids
