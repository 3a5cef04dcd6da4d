"""Generation-only part of the Threads benchmark (BENCHMARKS.md): the embedded pi_0 samples
8 responses to each of 8 test problems (max 128 new tokens) with torch threads 1 and 2,
alternated for ROUNDS rounds in one process; prints each timing and the medians.
Usage: python scripts/bench_threads_gen.py [ROUNDS]"""

import statistics
import sys
import time

import torch

from spo_store.lake import Lake
from spo_train.embedded.defaults import ensure_problems
from spo_train.lm.generation import TransformersGenerator
from spo_train.lm.models import load_model_and_tokenizer
from spo_train.lm.prompting import problem_prompt
from spo_train.rollouts.sampling import load_problems

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
lake = Lake.open("/tmp/bench_threads_gen_lake")
ensure_problems(lake)
problems = load_problems(lake, "p.split = 'test'")[:8]
model, tok = load_model_and_tokenizer(None)
gen = TransformersGenerator(model, tok)
prompts = [problem_prompt(p, tok) for p in problems]
times: dict[int, list[float]] = {1: [], 2: []}
for r in range(rounds):
    for threads in (1, 2):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        out = gen.generate(prompts, n=8, temperature=1.0, top_p=1.0, max_new_tokens=128, seed=r)
        took = time.perf_counter() - start
        tokens = sum(len(s.response_ids) for g in out for s in g)
        times[threads].append(took)
        print(f"round {r + 1} threads {threads}: {took:.2f} s, {tokens / took:.0f} tokens/s")
for threads, v in times.items():
    print(f"threads {threads}: median {statistics.median(v):.2f} s of {len(v)}")
