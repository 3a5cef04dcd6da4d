"""Keys of the `q0_estimates` table: Q0 belongs to its reference model and sampler.

A q0 is the soft value of a prompt under the reference policy pi_0 that trains on it (method
doc, "Values"), estimated from samples drawn with particular sampler settings. Estimates are
therefore keyed by `(problem_id, ref_model_id, sampler_key)`; a model or sampler change gets a
new estimate, never another model's value.
"""

from __future__ import annotations

import hashlib


def sampler_key(temperature: float, top_p: float, max_new_tokens: int) -> str:
    """Canonical text of the sampler settings behind an estimate, e.g.
    `temperature=1,top_p=1,max_new_tokens=256` (floats printed with `%g`)."""
    return f"temperature={float(temperature):g},top_p={float(top_p):g},max_new_tokens={int(max_new_tokens)}"


def estimate_id(problem_id: str, ref_model_id: str, sampler_key_: str) -> str:
    """The key of one estimate: a hash of problem, reference model and sampler settings."""
    digest = hashlib.sha256(f"{problem_id}\0{ref_model_id}\0{sampler_key_}".encode()).hexdigest()
    return f"q0-{digest[:24]}"
