"""Rebuild the embedded default from scratch: problems, tokenizer and the tiny ``pi_0``.

    python -m spo_train.embedded.build [--seed 0] [--out DIR] [--steps N] [--eval]
        [--sft-exclude last:N | --sft-exclude FILE]

Steps (all deterministic given the seed, on a given machine and torch build):

1. generate the train / valid / test problems (:mod:`spo_train.embedded.generator`) and write
   them as CodeContests-schema Parquet (``DIR/problems/{split}.parquet``, zstd);
2. verify every shipped solution by running it: every correct solution must pass all tests,
   every incorrect one must fail at least one (with ``--judge local``, the default, each
   program's output must also equal the output its bug predicts on every test);
3. train a byte-level BPE tokenizer on the train statements and solutions;
4. SFT a small ``LlamaForCausalLM`` on prompt -> solution (loss on the response tokens only)
   for a fixed number of steps (pass@1 is very sensitive to training length: stop by step
   count, never by time), and save model + tokenizer in Hugging Face format to ``DIR/pi0``;
5. with ``--eval``: pass@1 / pass@10 on the test split (n=20, T=0.4, top-p 0.95).

``--sft-exclude`` builds a pi_0 whose SFT leaves some train problems out, so their reference
solutions are new to it (the off-policy experiment, docs/experiments.md "Off-policy
experiment"): ``last:N`` leaves out the last N train problems by index (in the lake:
``p.name >= 'spo_embedded_train_<2000-N>'``, a rule an experiment config can name in SQL), a
FILE names them one per line (problem names ``spo_embedded_train_00042`` or lake problem ids
``em-...``; ``#`` starts a comment). The problems, the tokenizer (trained on every train
problem's text, so token ids match the shipped pi_0's) and every other step are unchanged; the
left-out names are written to ``pi0/sft_excluded.txt`` and counted in ``spo_build.json``.

Judges: ``--judge local`` (default) runs the generated solutions -- trusted code written by the
generator -- with an in-process runner in worker processes (thousands of test-runs per second);
``--judge sandbox`` uses ``spo_train.judge.judge_batch``; ``auto`` picks the sandbox when it
is importable. Model samples in ``--eval`` are untrusted: they go to the sandbox when importable,
else to a subprocess runner with time and memory limits.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from spo_train.embedded import generator as gen

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
SPLITS = ("train", "valid", "test")

# --- the recipe (the shipped pi_0 is built with exactly these) --------------------------------
VOCAB_SIZE = 620
SPECIAL_TOKENS = {"pad_token": "<|pad|>", "bos_token": "<|bos|>", "eos_token": "<|eos|>"}
MODEL_CONFIG = dict(
    hidden_size=192,
    intermediate_size=512,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
SFT_STEPS = 900
SFT_BATCH = 8
SFT_LR = 2e-3
SFT_WARMUP = 20
SFT_WEIGHT_DECAY = 0.01
EVAL_N, EVAL_T, EVAL_TOP_P, EVAL_MAX_NEW = 20, 0.4, 0.95, 384


def log(msg: str) -> None:
    print(f"[build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# 1-2: problems and their verification
# ---------------------------------------------------------------------------------------------


def all_tests(p: gen.Problem) -> list[tuple[str, str]]:
    return list(p.public_tests) + list(p.private_tests)


def _exec_program(code, stdin_text: str) -> str | None:
    """Run compiled trusted code with redirected stdio; stdout, or None if it raised."""
    old_in, old_out = sys.stdin, sys.stdout
    sys.stdin, sys.stdout = io.StringIO(stdin_text), io.StringIO()
    try:
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        return sys.stdout.getvalue()
    except SystemExit as e:
        return sys.stdout.getvalue() if e.code in (None, 0) else None
    except Exception:
        return None
    finally:
        sys.stdin, sys.stdout = old_in, old_out


def _verify_one(p: gen.Problem) -> list[str]:
    """Problems with ``p``'s solutions, as messages (empty: all good)."""
    errors = []
    tests = all_tests(p)
    for style, src in p.solutions:
        code = compile(src, f"<{p.name}:{style}>", "exec")
        for k, (inp, out) in enumerate(tests):
            got = _exec_program(code, inp)
            if not gen.outputs_equal(got, out):
                errors.append(f"{p.name}: correct solution '{style}' fails test {k}")
                break
    for (label, src), bug in zip(p.incorrect_solutions, p.bugs, strict=True):
        code = compile(src, f"<{p.name}:{label}>", "exec")
        failed = False
        for k, (inp, out) in enumerate(tests):
            got = _exec_program(code, inp)
            predicted = gen.evaluate(p.transforms, p.final, gen.parse_input(inp), bug)
            if not gen.outputs_equal(got, predicted):
                errors.append(
                    f"{p.name}: incorrect solution '{label}' does not do what its bug says on test {k}"
                )
                break
            failed = failed or not gen.outputs_equal(got, out)
        if not failed:
            errors.append(f"{p.name}: incorrect solution '{label}' passes every test")
    return errors


def _pool(workers: int):
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    return ctx.Pool(processes=workers)


def verify_local(problems: Sequence[gen.Problem], workers: int | None = None) -> list[str]:
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(problems) < 50:
        return [e for p in problems for e in _verify_one(p)]
    with _pool(workers) as pool:
        return [e for errs in pool.imap(_verify_one, problems, chunksize=16) for e in errs]


def _sandbox():
    try:
        from spo_train.judge import (
            JudgeJob,
            judge_batch,
            sandbox,  # noqa: F401
        )
    except ImportError:
        return None
    return JudgeJob, judge_batch


def _judge_jobs(JudgeJob, items):
    """``items``: (source, tests) pairs -> JudgeJobs with the embedded problems' limits."""
    return [
        JudgeJob(
            source=src,
            tests=[(i, o) for i, o in tests],
            time_limit_s=float(gen.TIME_LIMIT_S),
            memory_limit_mb=gen.MEMORY_LIMIT_BYTES // 1_000_000,
            float_tolerance=None,
        )
        for src, tests in items
    ]


def verify_sandbox(problems: Sequence[gen.Problem], workers: int | None = None) -> list[str]:
    JudgeJob, judge_batch = _sandbox()
    items, who = [], []
    for p in problems:
        for style, src in p.solutions:
            items.append((src, all_tests(p)))
            who.append((p.name, style, True))
        for label, src in p.incorrect_solutions:
            items.append((src, all_tests(p)))
            who.append((p.name, label, False))
    verdicts = judge_batch(_judge_jobs(JudgeJob, items), workers=workers)
    errors = []
    for (name, label, correct), v in zip(who, verdicts, strict=True):
        if correct and not v.passed:
            errors.append(f"{name}: correct solution '{label}' fails ({v})")
        if not correct and v.passed:
            errors.append(f"{name}: incorrect solution '{label}' passes every test")
    return errors


def verify(
    problems: Sequence[gen.Problem], judge: str = "local", workers: int | None = None
) -> str:
    """Run every solution; raise RuntimeError on any mismatch. Returns the judge used."""
    if judge == "auto":
        judge = "sandbox" if _sandbox() is not None else "local"
    if judge == "sandbox" and _sandbox() is None:
        raise RuntimeError("--judge sandbox: spo_train.judge.sandbox is not importable")
    errors = (
        verify_sandbox(problems, workers) if judge == "sandbox" else verify_local(problems, workers)
    )
    if errors:
        raise RuntimeError(
            f"{len(errors)} solution checks failed, e.g.:\n" + "\n".join(errors[:10])
        )
    return judge


def build_problems(
    seed: int, out: Path, sizes: dict[str, int], judge: str
) -> dict[str, list[gen.Problem]]:
    t0 = time.time()
    problems = gen.generate_problems(seed, sizes)
    n_sol = sum(
        len(p.solutions) + len(p.incorrect_solutions) for ps in problems.values() for p in ps
    )
    log(
        f"generated {sum(map(len, problems.values()))} problems, {n_sol} solutions in {time.time() - t0:.1f}s"
    )
    t0 = time.time()
    used = verify([p for ps in problems.values() for p in ps], judge)
    log(f"verified every solution with the {used} judge in {time.time() - t0:.1f}s")
    for split, ps in problems.items():
        path = gen.write_parquet(ps, out / "problems" / f"{split}.parquet")
        log(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {len(ps)} problems)")
    return problems


# ---------------------------------------------------------------------------------------------
# 3: tokenizer
# ---------------------------------------------------------------------------------------------


def tokenizer_corpus(problems: Sequence[gen.Problem]) -> list[str]:
    from spo_train.lm.prompting import PLAIN_TEMPLATE, format_response

    corpus = []
    for p in problems:
        corpus.append(PLAIN_TEMPLATE.format(bos="", statement=p.statement))
        corpus += [format_response(code) for _, code in p.solutions]
    return corpus


def train_tokenizer(corpus: Sequence[str], vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE tokenizer, wrapped as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[SPECIAL_TOKENS[k] for k in ("pad_token", "bos_token", "eos_token")],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(corpus), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
        **SPECIAL_TOKENS,
    )
    return tok


# ---------------------------------------------------------------------------------------------
# 4: SFT
# ---------------------------------------------------------------------------------------------


def sft_examples(
    problems: Sequence[gen.Problem], tok, seed: int, exclude: frozenset[str] = frozenset()
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + eos) for every correct solution of the problems whose name
    is not in `exclude`, in a seeded order."""
    from spo_train.lm.prompting import build_prompt, encode_prompt, format_response

    examples = []
    for p in problems:
        if p.name in exclude:
            continue
        prompt = encode_prompt(tok, build_prompt(p.statement, tok))
        for _, code in p.solutions:
            resp = tok(format_response(code), add_special_tokens=False)["input_ids"]
            examples.append((prompt, list(resp) + [tok.eos_token_id]))
    random.Random(f"spo-embedded-sft:{seed}").shuffle(examples)
    return examples


def make_model(tok, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **MODEL_CONFIG,
    )
    return LlamaForCausalLM(config)


def train_sft(
    model,
    examples: Sequence[tuple[list[int], list[int]]],
    *,
    steps: int = SFT_STEPS,
    batch_size: int = SFT_BATCH,
    lr: float = SFT_LR,
    seed: int = 0,
    pad_id: int = 0,
    log_every: int = 40,
) -> list[float]:
    """SFT with the loss on response tokens only; a fixed number of steps. Returns the losses."""
    import torch

    torch.manual_seed(seed)
    dev = next(model.parameters()).device
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": SFT_WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < SFT_WARMUP:
            return (step + 1) / SFT_WARMUP
        frac = (step - SFT_WARMUP) / max(1, steps - SFT_WARMUP)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    losses = []
    t0 = time.time()
    tokens = 0
    for step in range(steps):
        batch = [examples[(step * batch_size + k) % len(examples)] for k in range(batch_size)]
        width = max(len(pr) + len(rs) for pr, rs in batch)
        ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for r, (pr, rs) in enumerate(batch):
            seq = pr + rs
            ids[r, : len(seq)] = torch.tensor(seq)
            labels[r, len(pr) : len(seq)] = torch.tensor(rs)
            mask[r, : len(seq)] = 1
            tokens += len(seq)
        out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=labels.to(dev))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(out.loss.item())
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            dt = time.time() - t0
            log(
                f"sft step {step + 1}/{steps} loss {sum(losses[-log_every:]) / len(losses[-log_every:]):.4f} "
                f"({tokens / dt:.0f} tokens/s, {dt:.0f}s)"
            )
    model.eval()
    return losses


def build_model(
    seed: int,
    out: Path,
    problems: dict[str, list[gen.Problem]],
    steps: int,
    exclude: frozenset[str] = frozenset(),
) -> Path:
    """Tokenizer and SFT of pi_0 into ``out/pi0``; `exclude` names train problems whose
    solutions the SFT leaves out (the tokenizer still trains on every train problem)."""
    import torch

    t0 = time.time()
    tok = train_tokenizer(tokenizer_corpus(problems["train"]))
    log(f"trained tokenizer: {len(tok)} tokens in {time.time() - t0:.1f}s")
    examples = sft_examples(problems["train"], tok, seed, exclude)
    if exclude:
        log(f"SFT leaves out the solutions of {len(exclude)} train problems (--sft-exclude)")
    n_tok = sum(len(a) + len(b) for a, b in examples) / len(examples)
    log(f"{len(examples)} SFT examples (mean {n_tok:.0f} tokens); {steps} steps x {SFT_BATCH}")
    model = make_model(tok, seed)
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    t0 = time.time()
    losses = train_sft(model, examples, steps=steps, seed=seed, pad_id=tok.pad_token_id)
    log(f"SFT done in {time.time() - t0:.1f}s, final loss {losses[-1]:.4f}")
    dest = out / "pi0"
    dest.mkdir(parents=True, exist_ok=True)
    for f in dest.iterdir():
        if f.is_file():
            f.unlink()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.to(torch.float32).save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    info = {
        "built_by": "python -m spo_train.embedded.build",
        "seed": seed,
        "sft_steps": steps,
        "sft_batch_size": SFT_BATCH,
        "sft_lr": SFT_LR,
        "sft_examples_seen": steps * SFT_BATCH,
        "sft_examples_available": len(examples),
        "vocab_size": len(tok),
        "model_config": MODEL_CONFIG,
        "train_problems": len(problems["train"]),
        "sft_excluded_problems": len(exclude),
        "prompt_format": "plain (spo_train.lm.prompting.PLAIN_TEMPLATE)",
    }
    excluded_file = dest / "sft_excluded.txt"
    if exclude:
        excluded_file.write_text("".join(f"{n}\n" for n in sorted(exclude)))
    (dest / "spo_build.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    log(f"saved pi_0 to {dest}")
    return dest


# ---------------------------------------------------------------------------------------------
# 5: evaluation (pass@k)
# ---------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Codex paper): 1 - C(n-c, k) / C(n, k), as a product."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


_DRIVER = r"""
import io, json, os, resource, signal, sys
job = json.loads(sys.stdin.read())
marker = job["marker"]
mem = int(job["memory_mb"]) * 1024 * 1024
try:
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
except (ValueError, OSError):
    pass
class _Timeout(BaseException):
    pass
def _alarm(signum, frame):
    raise _Timeout()
signal.signal(signal.SIGALRM, _alarm)
real_out = sys.stdout
ok = True
try:
    code = compile(job["source"], "<solution>", "exec")
except BaseException:
    ok = False
if ok:
    for inp, expected in job["tests"]:
        sys.stdin, sys.stdout = io.StringIO(inp), io.StringIO()
        got = None
        signal.setitimer(signal.ITIMER_REAL, float(job["time_limit_s"]))
        try:
            exec(code, {"__name__": "__main__"})
            got = sys.stdout.getvalue()
        except SystemExit as e:
            got = sys.stdout.getvalue() if e.code in (None, 0) else None
        except BaseException:
            got = None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sys.stdin, sys.stdout = sys.__stdin__, real_out
        if got is None or got.split() != expected.split():
            ok = False
            break
real_out.write("\n" + marker + (" PASS" if ok else " FAIL") + "\n")
real_out.flush()
"""


def _run_untrusted(
    source: str, tests: Sequence[tuple[str, str]], time_limit_s: float, memory_mb: int
) -> bool:
    """Fallback judge for model samples: one subprocess per program, all tests inside it."""
    marker = f"@@spo-{random.SystemRandom().randrange(1 << 60):x}@@"
    job = {
        "source": source,
        "tests": list(tests),
        "time_limit_s": time_limit_s,
        "memory_mb": memory_mb,
        "marker": marker,
    }
    with tempfile.TemporaryDirectory() as cwd:
        try:
            r = subprocess.run(
                [sys.executable, "-I", "-c", _DRIVER],
                input=json.dumps(job),
                capture_output=True,
                text=True,
                cwd=cwd,
                timeout=time_limit_s * len(tests) + 5,
            )
        except subprocess.TimeoutExpired:
            return False
    return f"{marker} PASS" in r.stdout


def judge_programs(
    items: Sequence[tuple[str, Sequence[tuple[str, str]]]],
    workers: int | None = None,
    judge: str = "auto",
) -> tuple[list[bool], str]:
    """Judge untrusted programs; (passed flags, judge name: 'sandbox' or 'subprocess')."""
    sb = _sandbox() if judge in ("auto", "sandbox") else None
    if judge == "sandbox" and sb is None:
        raise RuntimeError("spo_train.judge.sandbox is not importable")
    if sb is not None:
        JudgeJob, judge_batch = sb
        verdicts = judge_batch(_judge_jobs(JudgeJob, items), workers=workers)
        return [bool(v.passed) for v in verdicts], "sandbox"
    workers = workers or os.cpu_count() or 1
    mem = gen.MEMORY_LIMIT_BYTES // 1_000_000

    def one(item):
        src, tests = item
        return _run_untrusted(src, tests, float(gen.TIME_LIMIT_S), mem) if src.strip() else False

    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(one, items)), "subprocess"


def read_split(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    for r in rows:
        r["tests"] = [
            (i, o)
            for key in ("public_tests", "private_tests", "generated_tests")
            for i, o in zip(r[key]["input"], r[key]["output"], strict=True)
        ]
    return rows


def evaluate_model(
    model_dir: Path,
    problems_path: Path,
    *,
    n: int = EVAL_N,
    temperature: float = EVAL_T,
    top_p: float = EVAL_TOP_P,
    max_new_tokens: int = EVAL_MAX_NEW,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 160,
    device: str = "cpu",
    judge: str = "auto",
) -> dict:
    """pass@1 / pass@10 of the model in ``model_dir`` on a problems Parquet file."""
    from spo_train.lm.generation import TransformersGenerator
    from spo_train.lm.models import load_model_and_tokenizer
    from spo_train.lm.prompting import build_prompt, extract_code

    rows = read_split(problems_path)[:limit]
    model, tok = load_model_and_tokenizer(model_dir, device=device)
    generator = TransformersGenerator(model, tok, batch_size=batch_size)
    prompts = [build_prompt(r["description"], tok) for r in rows]
    t0 = time.time()
    samples = generator.generate(
        prompts, n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
    )
    gen_s = time.time() - t0
    items = [
        (extract_code(s.text), r["tests"])
        for r, group in zip(rows, samples, strict=True)
        for s in group
    ]
    t0 = time.time()
    passed, judge = judge_programs(items, judge=judge)
    judge_s = time.time() - t0
    counts = [sum(passed[i * n : (i + 1) * n]) for i in range(len(rows))]
    n_tokens = sum(len(s.response_ids) for g in samples for s in g)
    result = {
        "problems": len(rows),
        "n": n,
        "temperature": temperature,
        "top_p": top_p,
        "pass@1": sum(pass_at_k(n, c, 1) for c in counts) / len(rows),
        "pass@10": sum(pass_at_k(n, c, 10) for c in counts) / len(rows) if n >= 10 else None,
        "solved_any": sum(c > 0 for c in counts) / len(rows),
        "completions_per_s": len(items) / gen_s,
        "tokens_per_s": n_tokens / gen_s,
        "mean_response_tokens": n_tokens / len(items),
        "stopped": sum(s.finish_reason == "stop" for g in samples for s in g) / len(items),
        "generation_s": gen_s,
        "judge": judge,
        "judge_s": judge_s,
    }
    if len(rows) and "cf_tags" in rows[0]:
        by_depth: dict[int, list[int]] = {}
        for r, c in zip(rows, counts, strict=True):
            by_depth.setdefault(len(r["cf_tags"]) - 1, []).append(c)
        result["pass@1_by_depth"] = {
            d: sum(pass_at_k(n, c, 1) for c in cs) / len(cs) for d, cs in sorted(by_depth.items())
        }
    return result


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


class BuildError(ValueError):
    """A bad build argument (one line, shown without a traceback)."""


def sft_exclusion(spec: str, train: Sequence[gen.Problem]) -> frozenset[str]:
    """The train problem names `--sft-exclude SPEC` leaves out of pi_0's SFT.

    `last:N` (0 <= N <= the train split's size): the last N train problems by index. Else a
    file of problem names or lake problem ids (`spo_store.adapters.problem_id` of the embedded
    dataset), one per line, `#` comments and blank lines ignored. Raises BuildError naming the
    spec (and the line) for a bad N, a missing file or a name that is no train problem.
    """
    from spo_store.adapters import problem_id

    names = [p.name for p in train]
    if spec.startswith("last:"):
        n = spec.removeprefix("last:")
        if not n.isdigit() or int(n) > len(names):
            raise BuildError(
                f"--sft-exclude {spec}: expected last:N with 0 <= N <= {len(names)} "
                "(the train problems)"
            )
        return frozenset(names[len(names) - int(n) :])
    path = Path(spec)
    if not path.is_file():
        raise BuildError(f"--sft-exclude {spec}: no such file (or use last:N)")
    by_id = {problem_id("embedded", n): n for n in names}
    known = set(names)
    out = set()
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        name = item if item in known else by_id.get(item)
        if name is None:
            raise BuildError(
                f"--sft-exclude {spec} line {i}: {item!r} is not a train problem name or id"
            )
        out.add(name)
    return frozenset(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m spo_train.embedded.build", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out", type=Path, default=ASSETS_DIR, help="output folder (default: the shipped assets)"
    )
    ap.add_argument("--steps", type=int, default=SFT_STEPS, help="SFT steps (a count, not a time)")
    ap.add_argument("--train", type=int, default=gen.DEFAULT_SIZES["train"])
    ap.add_argument("--valid", type=int, default=gen.DEFAULT_SIZES["valid"])
    ap.add_argument("--test", type=int, default=gen.DEFAULT_SIZES["test"])
    ap.add_argument(
        "--judge",
        choices=("local", "sandbox", "auto"),
        default="local",
        help="how to verify the generated solutions",
    )
    ap.add_argument("--problems-only", action="store_true", help="skip tokenizer and model")
    ap.add_argument(
        "--eval", action="store_true", help="also measure pass@1/pass@10 on the test split"
    )
    ap.add_argument(
        "--eval-only", action="store_true", help="only evaluate the model already in --out"
    )
    ap.add_argument(
        "--eval-limit", type=int, default=None, help="evaluate the first N test problems"
    )
    ap.add_argument(
        "--sft-exclude",
        metavar="last:N|FILE",
        default=None,
        help="leave these train problems' solutions out of pi_0's SFT: the last N by index, "
        "or a file of problem names / lake ids (one a line)",
    )
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_start = time.time()
    out: Path = args.out
    if args.sft_exclude is not None and (args.eval_only or args.problems_only):
        ap.error("--sft-exclude builds a model: not with --eval-only or --problems-only")
    if args.sft_exclude is not None and out.resolve() == ASSETS_DIR.resolve():
        ap.error("--sft-exclude: give --out DIR (the shipped pi_0 is built without exclusions)")
    if not args.eval_only:
        sizes = {"train": args.train, "valid": args.valid, "test": args.test}
        exclude: frozenset[str] = frozenset()
        if args.sft_exclude is not None:
            try:
                names = gen.generate_split("train", args.train, args.seed)
                exclude = sft_exclusion(args.sft_exclude, names)
            except BuildError as exc:
                ap.error(str(exc))
        problems = build_problems(args.seed, out, sizes, args.judge)
        if not args.problems_only:
            build_model(args.seed, out, problems, args.steps, exclude)
        log(f"build finished in {time.time() - t_start:.1f}s")
    if args.eval or args.eval_only:
        t0 = time.time()
        res = evaluate_model(
            out / "pi0", out / "problems" / "test.parquet", seed=args.seed, limit=args.eval_limit
        )
        res["eval_s"] = time.time() - t0
        log("eval " + json.dumps(res, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
