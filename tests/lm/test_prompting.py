"""Prompt building and code extraction on realistic model responses."""

from __future__ import annotations

import pytest

from spo_train.lm.prompting import (
    FENCE_CLOSE,
    PLAIN_TEMPLATE,
    STOP_STRINGS,
    build_prompt,
    encode_response,
    extract_code,
    fenced_blocks,
    format_response,
    response_text,
    stop_strings_for,
)

STATEMENT = "You are given a list of n integers.\n\nInput\n...\n\nOutput\nPrint the sum."


class PlainTok:
    """A tokenizer stand-in without a chat template (character-level ids)."""

    chat_template = None
    bos_token = "<|bos|>"
    eos_token_id = 2

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


class ChatTok(PlainTok):
    chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}<a>"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        assert not tokenize and add_generation_prompt
        return "".join(f"<u>{m['content']}</u>" for m in messages) + "<a>"


def test_plain_prompt_has_bos_statement_and_header():
    p = build_prompt(STATEMENT + "\n", PlainTok())
    assert p == PLAIN_TEMPLATE.format(bos="<|bos|>", statement=STATEMENT)
    assert p.startswith("<|bos|>### Problem\n") and p.endswith("### Python 3 solution\n")


def test_chat_prompt_uses_template_and_asks_for_python_stdin():
    p = build_prompt(STATEMENT, ChatTok())
    assert p.startswith("<u>") and p.endswith("</u><a>")
    assert "Python 3" in p and "standard input" in p and STATEMENT in p
    assert stop_strings_for(ChatTok()) == ()
    assert stop_strings_for(PlainTok()) == STOP_STRINGS


def test_prose_around_code():
    r = (
        "Here is my solution. We read the list and sum it.\n\n"
        "```python\nn = int(input())\nprint(sum(map(int, input().split())))\n```\n\n"
        "This runs in O(n) time."
    )
    assert extract_code(r) == "n = int(input())\nprint(sum(map(int, input().split())))\n"


def test_several_blocks_takes_last_closed_python_block():
    r = (
        "First attempt:\n```python\nprint(1)\n```\nExample input:\n```\n3\n1 2 3\n```\n"
        "Improved:\n```python\nprint(2)\n```\nDone."
    )
    assert extract_code(r) == "print(2)\n"


def test_python_block_preferred_over_other_languages_and_bare_fences():
    r = "```bash\npython sol.py < in.txt\n```\n```\n5\n```\n```python3\nprint(3)\n```"
    assert extract_code(r) == "print(3)\n"


def test_py_and_python3_fences():
    assert extract_code("```py\nprint('py')\n```") == "print('py')\n"
    assert extract_code("```python3\nprint('p3')\n```\n") == "print('p3')\n"
    assert extract_code("```Python\nprint('P')\n```") == "print('P')\n"


def test_bare_fence_used_when_no_python_fence():
    r = "Solution:\n```\nprint('bare')\n```\nand input\n```\n1 2\n```"
    assert extract_code(r) == "print('bare')\n"


def test_no_block_returns_whole_response_stripped():
    assert extract_code("\n\nprint(42)\n\n") == "print(42)\n"
    assert extract_code("   \n") == ""


def test_unterminated_block_cut_by_length():
    r = "Sure!\n```python\nn = int(input())\nfor i in range(n):\n    print(i"
    assert extract_code(r) == "n = int(input())\nfor i in range(n):\n    print(i\n"
    (block,) = fenced_blocks(r)
    assert not block.closed and block.lang == "python"


def test_closed_python_block_beats_later_unterminated_one():
    r = "```python\nprint('done')\n```\nAlternatively:\n```python\nprint('cut"
    assert extract_code(r) == "print('done')\n"


def test_indented_code_inside_block_kept():
    code = "def main():\n    a = [1, 2]\n\n    print(a)\n\n\nmain()\n"
    assert extract_code(format_response(code)) == code


def test_tiny_model_format_roundtrip_and_stop_string():
    code = "print(1)\n"
    resp = format_response(code)
    assert resp.startswith("```python\n") and resp.endswith(FENCE_CLOSE)
    # The first stop string occurrence is exactly the closing fence.
    assert resp.index(STOP_STRINGS[0]) == len(resp) - len(FENCE_CLOSE)
    assert extract_code(resp) == code


def test_encode_response_wraps_bare_code_and_handles_eos():
    plain, chat = PlainTok(), ChatTok()
    assert response_text("print(1)\n") == format_response("print(1)\n")
    assert response_text("```python\nprint(1)\n```") == "```python\nprint(1)\n```"
    ids = encode_response(plain, "print(1)\n")
    assert "".join(map(chr, ids)) == format_response("print(1)\n")  # stop string ends it: no eos
    ids = encode_response(chat, "print(1)\n")
    assert ids[-1] == 2 and "".join(map(chr, ids[:-1])) == format_response("print(1)\n")


@pytest.mark.parametrize("fence", ["```", "````", "~~~"])
def test_fence_styles(fence):
    assert extract_code(f"{fence}python\nx = 1\n{fence}\n") == "x = 1\n"


def test_call_based_prompt_shows_the_starter_code():
    """TACO call-based problems: the prompt shows the function to write (else the model
    writes a stdin program that can never pass)."""
    from spo_train.lm.prompting import problem_prompt

    starter = "class Solution:\n    def addTwo(self, a: int, b: int) -> int:\n        "
    row = {
        "statement": "Add two numbers.",
        "fn_name": "addTwo",
        "extra": '{"starter_code": "' + starter.replace("\n", "\\n") + '", "source": "leetcode"}',
    }
    plain = problem_prompt(row, PlainTok())
    assert "def addTwo(self, a: int, b: int) -> int:" in plain
    assert "calls `addTwo`" in plain and "no standard input" in plain
    assert plain.endswith("### Python 3 solution\n")
    chat = problem_prompt(row, ChatTok())
    assert "defining the function `addTwo`" in chat and "reads the input from standard" not in chat
    # No starter code in the dataset: the signature comes from fn_name.
    bare = problem_prompt({"statement": "Add.", "fn_name": "add", "extra": "{}"}, PlainTok())
    assert "def add(*args):" in bare
    # A stdin problem's prompt is unchanged.
    stdin = {"statement": STATEMENT, "fn_name": None, "extra": '{"starter_code": ""}'}
    assert problem_prompt(stdin, PlainTok()) == build_prompt(STATEMENT, PlainTok())


def test_lake_rows_carry_what_the_call_based_prompt_needs(lake, tmp_path):
    """`load_problems` (eval, estimate-q0, rollouts) returns fn_name and extra, so the
    sampled prompt of an ingested TACO call-based problem shows its starter code."""
    import json

    from spo_store.ingest import ingest_human_solutions
    from spo_train.lm.prompting import problem_prompt
    from spo_train.rollouts.sampling import load_problems

    row = {
        "question": "Return a + b.",
        "solutions": json.dumps(["def add(a, b):\n    return a + b\n"]),
        "input_output": json.dumps({"fn_name": "add", "inputs": [[1, 2]], "outputs": [[3]]}),
        "starter_code": "def add(a, b):\n    ",
        "source": "codewars",
    }
    path = tmp_path / "taco_train.jsonl"
    path.write_text(json.dumps(row) + "\n")
    ingest_human_solutions(lake, [path])
    [problem] = load_problems(lake, "TRUE")
    prompt = problem_prompt(problem, PlainTok())
    assert "```python\ndef add(a, b):" in prompt and "calls `add`" in prompt
