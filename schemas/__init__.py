"""Lake table schemas: the single source of truth (installed as the `spo_schemas` package).

Every table is one Lance dataset under the lake root (`<root>/<table>.lance`). Each dataset's
Arrow schema carries `spo.schema_version` in its metadata; `spo_store` refuses (or migrates) a
lake written by another version. Field metadata `doc` documents each column; `heavy=1` marks
columns that simple analysis should not read (token ids, log-probs, long text): `spo_store`
keeps them out of its in-memory metadata cache and fetches them by row only when a batch needs
them.

Changing a schema: bump `SCHEMA_VERSION` and add a step to `spo_store.migrate.MIGRATIONS`
(from the old version to the new one), with a test on a fixture lake written by the old release
(`tests/fixtures/`). Version history:
- 1: the first release.
- 2: problems gain platform, float_tolerance_source, checker, fn_name, input_file, output_file
  and judge_issue; trajectories gain max_new_tokens; q0 moves from problems to `q0_estimates`,
  keyed by problem, reference model and sampler settings.
- 3: trajectories' `behaviour_logprobs` mean the log-probs under the distribution that drew each
  token (tempered, top-p renormalised); the sampling model's temperature-1 log-probs, which
  `behaviour_logprobs` held until version 2, move to the new column `model_logprobs`.
- 4: annotations (pivotal token search, `spo pts`) gain a key `annotation_id` and record what
  their estimates are of: the reference model and sampler of the rollouts (`ref_model_id`,
  `sampler_key`, temperature, top-p, max_new_tokens), the rollouts asked per estimate and the
  bisection threshold, successes per position, the response length in tokens, the text of
  each response token, and the `rollout_key` naming their rollouts (`trajectories` rows
  `pts-<rollout_key>@<position>#<k>`).
- 5: trajectories gain `worker_id`, the rollout worker that sampled a row (`spo train
  --rollout-workers N`, `spo rollout`; NULL for rows sampled in the command's own process and
  for every row written before schema 5).
- 6: q0_estimates gain `s0` (the unbiased estimate of S0 the q0 is computed from), its exact 95%
  interval `s0_low`, `s0_high` and that interval mapped to Q0 (`q0_low`, `q0_high`), and
  `stopping`, the sampling rule behind the counts (`fixed`, or `sequential(r=..,checks=..)`:
  until r successes or the cap, checked at those judged-sample counts; `spo estimate-q0`'s
  default from schema 6). Rows written before 6 were fixed-n: s0 = c/n, Clopper-Pearson.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 6
VERSION_KEY = b"spo.schema_version"

TESTS_TYPE = pa.struct([("input", pa.list_(pa.string())), ("output", pa.list_(pa.string()))])
TIMESTAMP = pa.timestamp("us", tz="UTC")


def _f(name: str, type_: pa.DataType, doc: str, *, nullable: bool = True, heavy: bool = False):
    meta = {b"doc": doc.encode()}
    if heavy:
        meta[b"heavy"] = b"1"
    return pa.field(name, type_, nullable=nullable, metadata=meta)


PROBLEMS = pa.schema(
    [
        _f("problem_id", pa.string(), "stable id: hash of source_dataset and name", nullable=False),
        _f("name", pa.string(), "problem name as given by its dataset", nullable=False),
        _f("source_dataset", pa.string(), "code_contests | taco | jsonl | embedded"),
        _f(
            "platform",
            pa.string(),
            "contest platform the problem comes from: codeforces | codechef | atcoder | "
            "hackerearth | codejam | aizu | leetcode | codewars | ... (NULL: unknown)",
        ),
        _f(
            "split",
            pa.string(),
            "train | valid | test | unspecified (settable: spo lake set-split)",
        ),
        _f("statement", pa.string(), "problem statement shown to the model", heavy=True),
        _f("public_tests", TESTS_TYPE, "tests shown in the statement", heavy=True),
        _f("private_tests", TESTS_TYPE, "hidden tests", heavy=True),
        _f("generated_tests", TESTS_TYPE, "generated tests (CodeContests)", heavy=True),
        _f("num_tests", pa.int32(), "public + private + generated tests"),
        _f("time_limit_s", pa.float64(), "per-test CPU time limit in seconds"),
        _f("memory_limit_mb", pa.int32(), "memory limit in MiB"),
        _f(
            "float_tolerance",
            pa.float64(),
            "absolute-or-relative error allowed on non-integer numeric output tokens "
            "(NULL: exact token comparison; ingest sets one on every row, see float_tolerance_source)",
        ),
        _f(
            "float_tolerance_source",
            pa.string(),
            "where float_tolerance comes from: statement | dataset | default | NULL",
        ),
        _f(
            "checker",
            pa.string(),
            "Python 3 checker run in its own sandbox as `checker INPUT OUTPUT ANSWER` (testlib order) "
            "(paths); exit 0 accepts (NULL: token comparison)",
            heavy=True,
        ),
        _f(
            "fn_name",
            pa.string(),
            "call-based problem (TACO Codewars/LeetCode): the function or Solution method the "
            "tests call, with JSON-encoded arguments and return values (NULL: stdin/stdout)",
        ),
        _f("input_file", pa.string(), "file the program reads instead of stdin (NULL: stdin)"),
        _f("output_file", pa.string(), "file the program writes instead of stdout (NULL: stdout)"),
        _f(
            "judge_issue",
            pa.string(),
            "why the problem cannot be judged reliably, as '<reason>: <detail>' (reasons: "
            "no_tests, multiple_answers, labels_disagree, interactive, unsupported_io, "
            "unsupported_limits, ...); NULL: judged reliably",
        ),
        _f("difficulty", pa.string(), "dataset difficulty label"),
        _f("extra", pa.string(), "other dataset fields as JSON", heavy=True),
        _f("ingest_run_id", pa.string(), "run that ingested the problem"),
        _f("created_at", TIMESTAMP, "when the row was written"),
    ]
)

# Q0 belongs to the reference model and sampler that estimated it (method doc, "Values"): one row
# per (problem, reference model, sampler settings), keyed by `estimate_id`.
Q0_ESTIMATES = pa.schema(
    [
        _f(
            "estimate_id",
            pa.string(),
            "key: hash of problem_id, ref_model_id and sampler_key",
            nullable=False,
        ),
        _f("problem_id", pa.string(), "problems.problem_id", nullable=False),
        _f(
            "ref_model_id",
            pa.string(),
            "identity of the reference model pi_0 sampled",
            nullable=False,
        ),
        _f(
            "sampler_key",
            pa.string(),
            "canonical sampler settings, 'temperature=..,top_p=..,max_new_tokens=..'",
            nullable=False,
        ),
        _f("temperature", pa.float32(), "sampling temperature of the estimate's samples"),
        _f("top_p", pa.float32(), "sampling top-p of the estimate's samples"),
        _f("max_new_tokens", pa.int32(), "response length bound of the estimate's samples"),
        _f("samples", pa.int32(), "n: judged pi_0 samples behind the estimate"),
        _f("successes", pa.int32(), "c: successful samples among them"),
        _f("beta", pa.float64(), "beta q0 was computed with"),
        _f(
            "q0",
            pa.float64(),
            "soft value of the prompt at beta: beta*log(S0+(1-S0)exp(-1/beta)), S0 = s0",
        ),
        _f(
            "s0",
            pa.float64(),
            "unbiased estimate of S0 (pi_0's success rate) under the stopping rule: c/n when "
            "fixed; Rao-Blackwell (Haldane-type) when sequential (spo_store.q0_sequential)",
        ),
        _f("s0_low", pa.float64(), "exact 95% interval of S0 under the stopping rule: low end"),
        _f("s0_high", pa.float64(), "exact 95% interval of S0 under the stopping rule: high end"),
        _f("q0_low", pa.float64(), "95% interval of q0 at beta: q0 of s0_low (q0 increases in S0)"),
        _f("q0_high", pa.float64(), "95% interval of q0 at beta: q0 of s0_high"),
        _f(
            "stopping",
            pa.string(),
            "rule that decided the samples: 'fixed' (n chosen in advance) or "
            "'sequential(r=R,checks=N1,N2,..)' (until R successes or the cap, looked at N1, N2, ..)",
        ),
        _f("run_id", pa.string(), "estimate-q0 run that wrote the estimate"),
        _f("created_at", TIMESTAMP, "when the row was written"),
    ]
)

TRAJECTORIES = pa.schema(
    [
        _f("traj_id", pa.string(), "unique trajectory id", nullable=False),
        _f("problem_id", pa.string(), "problems.problem_id", nullable=False),
        _f("run_id", pa.string(), "runs.run_id that wrote the row", nullable=False),
        _f("source", pa.string(), "human | pi0 | online | eval | offline | ...", nullable=False),
        _f("policy_version", pa.int64(), "trainer step of the weights that sampled it"),
        _f("model_id", pa.string(), "identity of the sampling model (NULL for human)"),
        _f("temperature", pa.float32(), "sampling temperature"),
        _f("top_p", pa.float32(), "sampling top-p"),
        _f("language", pa.string(), "programming language of the response"),
        _f("response", pa.string(), "response text", heavy=True),
        _f("response_chars", pa.int32(), "length of response in characters"),
        _f("reward", pa.float32(), "0 passes all tests, -1 fails, NULL not judged"),
        _f(
            "reward_source",
            pa.string(),
            "label (the dataset's; reward NULL when the problem has no tests) | judge",
        ),
        _f("judge_status", pa.string(), "judge verdict status"),
        _f("passed_tests", pa.int32(), "tests passed"),
        _f("total_tests", pa.int32(), "tests run"),
        _f("finish_reason", pa.string(), "stop | length (sampled rows)"),
        _f("content_hash", pa.string(), "sha256 of problem_id and response: dedup key"),
        _f("tokenizer_id", pa.string(), "identity of the tokenizer of prompt_ids/response_ids"),
        _f("prompt_ids", pa.list_(pa.int32()), "prompt token ids", heavy=True),
        _f("response_ids", pa.list_(pa.int32()), "response token ids", heavy=True),
        _f("num_response_tokens", pa.int32(), "len(response_ids)"),
        _f(
            "behaviour_logprobs",
            pa.list_(pa.float32()),
            "log mu(a_t | prefix) of each response token under the distribution that drew it: "
            "softmax(logits/temperature) renormalised over the top-p kept set; 0 when greedy "
            "(temperature 0). NULL: not sampled here (human, ingested), or sampled at "
            "temperature/top-p other than 1 by spo before schema 3 (not recoverable)",
            heavy=True,
        ),
        _f("ref_model_id", pa.string(), "identity of the reference model of ref_logprobs"),
        _f("ref_logprobs", pa.list_(pa.float32()), "log pi_0 of response tokens", heavy=True),
        _f("created_at", TIMESTAMP, "when the row was written"),
        # Columns added by a migration go last: Lance adds columns at the end of a dataset.
        _f("max_new_tokens", pa.int32(), "response length bound of the sampler (NULL: human)"),
        _f(
            "model_logprobs",
            pa.list_(pa.float32()),
            "log pi(a_t | prefix) of each response token under the sampling model itself "
            "(temperature 1, no top-p): PPO's pi_old; pi_old/mu = exp(model_logprobs - "
            "behaviour_logprobs). NULL: not sampled here (human, ingested)",
            heavy=True,
        ),
        _f(
            "worker_id",
            pa.string(),
            "rollout worker that sampled and committed the row: '<run_id>/w<index>' "
            "(spo train --rollout-workers, spo rollout; docs/rollouts.md). NULL: sampled in "
            "the command's own process, or written before schema 5",
        ),
    ]
)

# Token ids and reference log-probs of trajectories whose own columns do not match the
# tokenizer/reference model in use (offline text, other models' samples). Keyed by identity, so
# a different tokenizer or reference model never reads stale ids.
TOKEN_CACHE = pa.schema(
    [
        _f("traj_id", pa.string(), "trajectories.traj_id", nullable=False),
        _f("tokenizer_id", pa.string(), "identity of the tokenizer", nullable=False),
        _f("ref_model_id", pa.string(), "identity of the reference model (NULL: ids only)"),
        _f("prompt_ids", pa.list_(pa.int32()), "prompt token ids", heavy=True),
        _f("response_ids", pa.list_(pa.int32()), "response token ids", heavy=True),
        _f("ref_logprobs", pa.list_(pa.float32()), "log pi_0 of response tokens", heavy=True),
        _f("run_id", pa.string(), "run that computed the entry"),
        _f("created_at", TIMESTAMP, "when the row was written"),
    ]
)

RUNS = pa.schema(
    [
        _f("run_id", pa.string(), "unique run id", nullable=False),
        _f(
            "kind",
            pa.string(),
            "ingest | estimate-q0 | train | rollout | eval | pts | ...",
            nullable=False,
        ),
        _f("status", pa.string(), "running | completed | failed | interrupted"),
        _f("model_id", pa.string(), "identity of the model used"),
        _f("tokenizer_id", pa.string(), "identity of the tokenizer used"),
        _f("config", pa.string(), "the run's configuration as JSON"),
        _f("inputs", pa.string(), "input files with sha256 checksums as JSON"),
        _f("lake_version_at_start", pa.string(), "table versions when the run started, JSON"),
        _f("code_version", pa.string(), "spo version and git commit"),
        _f("host", pa.string(), "hostname"),
        _f("parent_run_id", pa.string(), "run this one continues or belongs to"),
        _f("started_at", TIMESTAMP, "start time"),
        _f("ended_at", TIMESTAMP, "end time (NULL while running or if killed)"),
    ]
)

# Sparse per-token success-probability estimates of one trajectory (`spo pts`: pivotal token
# search, method doc "Pivotal Token Search"): one row per (trajectory, reference model, sampler,
# tokenizer, rollouts per estimate, threshold), keyed by `annotation_id`.
ANNOTATIONS = pa.schema(
    [
        _f("traj_id", pa.string(), "trajectories.traj_id", nullable=False),
        _f("run_id", pa.string(), "annotating run", nullable=False),
        _f("tokenizer_id", pa.string(), "tokenizer the positions refer to"),
        _f(
            "positions",
            pa.list_(pa.int32()),
            "response token positions t (0-based, ascending): index into the response's token "
            "ids, as column t of the trainer's log-probs; -1 is the prompt alone (no response "
            "token yet)",
        ),
        _f(
            "s_t",
            pa.list_(pa.float32()),
            "estimated success probability after a_<=t under ref_model_id (successes/samples)",
        ),
        _f("samples", pa.list_(pa.int32()), "judged rollouts behind each estimate"),
        _f("method", pa.string(), "pts | mc | ..."),
        _f("created_at", TIMESTAMP, "when the row was written"),
        # Columns added by a migration go last: Lance adds columns at the end of a dataset.
        _f(
            "annotation_id",
            pa.string(),
            "key: hash of traj_id, ref_model_id, tokenizer_id, sampler_key, rollouts_per_estimate, "
            "threshold and method",
            nullable=False,
        ),
        _f(
            "ref_model_id",
            pa.string(),
            "identity of the model whose success probabilities these are (the rollouts' sampler; "
            "NULL: not recorded, schema < 4)",
        ),
        _f(
            "sampler_key",
            pa.string(),
            "canonical sampler settings of the rollouts, 'temperature=..,top_p=..,max_new_tokens=..' "
            "(max_new_tokens: new tokens after the prefix)",
        ),
        _f("temperature", pa.float32(), "sampling temperature of the rollouts"),
        _f("top_p", pa.float32(), "sampling top-p of the rollouts"),
        _f("max_new_tokens", pa.int32(), "tokens a rollout may add after its prefix"),
        _f("rollouts_per_estimate", pa.int32(), "K: rollouts sampled per position (paper: 10)"),
        _f(
            "threshold",
            pa.float64(),
            "bisection threshold: an interval is split while its ends' S differ by more",
        ),
        _f("successes", pa.list_(pa.int32()), "successful rollouts behind each estimate"),
        _f(
            "response_tokens",
            pa.int32(),
            "T: the response's length in tokens of tokenizer_id (its S after the last token is "
            "1, the trajectory's own success: not an estimate, not stored)",
        ),
        _f(
            "rollout_key",
            pa.string(),
            "the rollouts behind the estimates are trajectories with traj_id "
            "'pts-<rollout_key>@<position>#<k>' (source 'pts')",
        ),
        _f(
            "tokens",
            pa.list_(pa.string()),
            "text of each response token (tokenizer_id's decoding of its id alone), so positions "
            "can be read in context in SQL: tokens[t + 1] is token t (DuckDB lists are 1-based)",
            heavy=True,
        ),
    ]
)

METRICS = pa.schema(
    [
        _f("run_id", pa.string(), "runs.run_id", nullable=False),
        _f("step", pa.int64(), "training step (or 0)"),
        _f("name", pa.string(), "metric name, e.g. train/loss, eval/pass@10", nullable=False),
        _f("value", pa.float64(), "metric value"),
        _f("split", pa.string(), "data split for evaluation metrics"),
        _f("created_at", TIMESTAMP, "when the row was written"),
    ]
)

# One row per training batch: `(trajectories version, traj ids)` reproduces it exactly.
BATCHES = pa.schema(
    [
        _f("run_id", pa.string(), "training run", nullable=False),
        _f("step", pa.int64(), "training step", nullable=False),
        _f("trajectories_version", pa.int64(), "trajectories table version sampled from"),
        _f("traj_ids", pa.list_(pa.string()), "trajectory ids in batch order"),
        _f("sources", pa.list_(pa.string()), "mixture source of each trajectory"),
        _f("seed", pa.int64(), "sampler seed"),
        _f("created_at", TIMESTAMP, "when the row was written"),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "problems": PROBLEMS,
    "q0_estimates": Q0_ESTIMATES,
    "trajectories": TRAJECTORIES,
    "token_cache": TOKEN_CACHE,
    "runs": RUNS,
    "annotations": ANNOTATIONS,
    "metrics": METRICS,
    "batches": BATCHES,
}


# The key of each keyed table: `Lake.insert_new` adds only rows whose key is not yet present,
# atomically under concurrent writers. Tables not listed are append-only logs.
KEYS: dict[str, str] = {
    "problems": "problem_id",
    "trajectories": "traj_id",
    "q0_estimates": "estimate_id",
    "annotations": "annotation_id",
}


def table_schema(name: str) -> pa.Schema:
    """The versioned Arrow schema of table `name`, with `spo.schema_version` in its metadata."""
    return TABLES[name].with_metadata({VERSION_KEY: str(SCHEMA_VERSION).encode()})


def heavy_columns(name: str) -> list[str]:
    """Columns of `name` marked heavy (kept out of metadata scans)."""
    return [f.name for f in TABLES[name] if (f.metadata or {}).get(b"heavy") == b"1"]


def light_columns(name: str) -> list[str]:
    """Columns of `name` that are cheap to scan."""
    heavy = set(heavy_columns(name))
    return [f.name for f in TABLES[name] if f.name not in heavy]
