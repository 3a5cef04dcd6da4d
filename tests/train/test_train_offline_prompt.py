"""An offline (human) row of a call-based problem trains on the prompt its rollouts are
sampled with (`prompting.problem_prompt`: fn_name and starter code), not the bare statement
(issue 9 follow-up, finding 9)."""

from __future__ import annotations

import json

import pyarrow as pa

from spo_train.lm.models import load_model_and_tokenizer
from spo_train.lm.prompting import build_prompt, encode_prompt, problem_prompt


def test_offline_row_of_call_based_problem_gets_the_rollout_prompt(tmp_path):
    from spo_store.lake import Lake
    from spo_train.rollouts.sampling import PROBLEM_COLUMNS
    from spo_train.train.batch import ReferenceCache

    model, tok = load_model_and_tokenizer(None)
    lake = Lake.open(tmp_path / "lake")
    assert "fn_name" in PROBLEM_COLUMNS and "extra" in PROBLEM_COLUMNS  # the trainer's rows
    problem = {
        "problem_id": "p",
        "statement": "Return the sum of a and b.",
        "fn_name": "add",
        "extra": json.dumps({"starter_code": "class Solution:\n    def add(self, a, b):\n"}),
        "q0": -0.5,
    }
    rows = pa.table(
        {
            "traj_id": ["human"],
            "problem_id": ["p"],
            "response": ["class Solution:\n    def add(self, a, b):\n        return a + b\n"],
            "finish_reason": [None],
            "tokenizer_id": [None],
            "reward": [0.0],
        },
        schema=pa.schema(
            [
                ("traj_id", pa.string()),
                ("problem_id", pa.string()),
                ("response", pa.string()),
                ("finish_reason", pa.string()),
                ("tokenizer_id", pa.string()),
                ("reward", pa.float64()),
            ]
        ),
    )
    prepared = ReferenceCache(lake, tok, "embedded", model, "pi0", "run").prepare(
        rows, {"p": problem}
    )
    rollout_ids = encode_prompt(tok, problem_prompt(problem, tok))
    assert prepared.prompt_ids[0] == rollout_ids
    assert rollout_ids != encode_prompt(tok, build_prompt(problem["statement"], tok))
