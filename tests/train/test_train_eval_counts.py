"""`spo eval` counts only judged samples and reports what it could not score (issue 9, items 2
and 3): a problem whose samples the judge could not judge has no pass@k (reported, not dropped),
a problem with a judge_issue is left out by default and counted per reason."""

from __future__ import annotations

import json
import subprocess

from spo_train.evaluate import eval_notes, evaluate
from spo_train.rollouts.sampling import SamplerSettings, load_problems
from tests.conftest import make_generator


def test_unjudged_samples_are_reported_not_scored(small_lake, tiny_model):  # noqa: F811
    small_lake.append(
        "problems",
        [{"problem_id": "no-tests", "name": "no-tests", "split": "train", "statement": "Print 1."}],
    )
    gen, tok, model_id, tok_id, _ = make_generator(tiny_model)
    problems = load_problems(small_lake, "p.split = 'train'")
    assert len(problems) == 5
    res = evaluate(
        small_lake,
        gen,
        tok,
        problems,
        settings=SamplerSettings(3, 0.4, 0.95, 8, 0),
        ks=(1, 3),
        run_id="eval-test",
        model_id=model_id,
        tokenizer_id=tok_id,
        split="train",
    )
    assert res["samples"] == 15 and res["unjudged"] == 3 and res["judged"] == 12
    assert res["judged_by_problem"]["no-tests"] == 0
    # pass@k is over the 4 judged problems; the 5th is named, not silently counted as a failure
    assert res["pass@1_problems"] == res["pass@3_problems"] == 4
    assert res["short_of_k"] == {"pass@1": ["no-tests"], "pass@3": ["no-tests"]}
    notes = " ".join(eval_notes(res))
    assert "3 of 15 samples could not be judged" in notes and "no-tests" in notes
    stored = small_lake.sql(
        "SELECT count(*) AS n FROM trajectories WHERE problem_id = 'no-tests' AND reward IS NULL"
    )["n"][0]
    assert stored == 3
    logged = small_lake.sql(
        "SELECT value FROM metrics WHERE run_id = 'eval-test' AND name = 'eval/train/unjudged'"
    )["value"].to_list()
    assert logged == [3.0]


def test_eval_cli_leaves_out_judge_issue_problems_and_says_why(
    small_lake,  # noqa: F811
    tiny_model,  # noqa: F811
    tmp_path,
):
    ids = small_lake.sql("SELECT problem_id FROM problems WHERE split = 'train' ORDER BY name")
    pids = ids["problem_id"].to_list()
    small_lake.update_rows(
        "problems",
        "problem_id",
        [
            {"problem_id": pids[0], "judge_issue": "multiple_answers: any order"},
            {"problem_id": pids[1], "judge_issue": "interactive: talks to a judge"},
            {"problem_id": pids[2], "judge_issue": "multiple_answers: any valid tree"},
        ],
    )
    common = ["--model", str(tiny_model), "--lake", small_lake.uri, "--split", "train"]
    common += ["--n", "2", "--k", "1", "--max-new-tokens", "8", "--json"]
    r = subprocess.run(
        ["spo", "eval", *common], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["problems"] == 1 and out["left_out"] == {"multiple_answers": 2, "interactive": 1}
    err = " ".join(r.stderr.split())
    assert (
        "left out 3 problems the judge cannot handle reliably (2 multiple_answers, 1 interactive)"
        in err
    )
    r = subprocess.run(
        ["spo", "eval", *common, "--include-unreliable"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["problems"] == 4 and out["left_out"] == {}
