"""Per-worker decoding configs of rollout workers (`--rollout-worker-decoding`); no torch.

A spec is `POLICY[:LOW-HIGH[:TOP_P]]`, several separated by ';' and cycled over the workers:
`current` samples the trainer's latest published weights, `reference` keeps pi_0 (its rows
are `source='pi0'`, policy version 0, with pi_0's log-probs as their reference log-probs). A
temperature is one value or a LOW-HIGH range drawn per sample (as `--rollout-temperature`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

POLICIES = ("current", "reference")


@dataclass(frozen=True)
class Decoding:
    """One worker's sampler: which policy, temperature range (drawn per sample), top-p."""

    policy: str
    temperature: tuple[float, float]
    top_p: float

    def describe(self) -> str:
        low, high = self.temperature
        temp = f"{low:g}" if low == high else f"{low:g}-{high:g}"
        return f"{self.policy}:{temp}:{self.top_p:g}"


def parse_decoding(
    text: str | None, default_temperature: tuple[float, float], default_top_p: float
) -> list[Decoding]:
    """The specs of `text` (None or empty: one `current` spec with the defaults).

    Raises ValueError naming the bad part."""
    if text is None or not text.strip():
        return [Decoding("current", tuple(default_temperature), default_top_p)]  # type: ignore[arg-type]
    out = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        fields = [f.strip() for f in part.split(":")]
        if len(fields) > 3:
            raise ValueError(f"{part!r} has more than POLICY:TEMPERATURE:TOP_P")
        policy = fields[0]
        if policy not in POLICIES:
            raise ValueError(f"{part!r}: policy {policy!r} is not current or reference")
        temperature = tuple(default_temperature)
        if len(fields) > 1 and fields[1]:
            try:
                vals = tuple(float(x) for x in fields[1].split("-"))
            except ValueError:
                raise ValueError(
                    f"{part!r}: temperature {fields[1]!r} is not T or LOW-HIGH"
                ) from None
            temperature = vals * 2 if len(vals) == 1 else vals
            if (
                len(temperature) != 2
                or not all(math.isfinite(t) and 0 < t <= 10 for t in temperature)
                or temperature[0] > temperature[1]
            ):
                raise ValueError(f"{part!r}: temperature must be T or LOW-HIGH in (0, 10]")
        top_p = default_top_p
        if len(fields) > 2 and fields[2]:
            try:
                top_p = float(fields[2])
            except ValueError:
                raise ValueError(f"{part!r}: top-p {fields[2]!r} is not a number") from None
            if not 0 < top_p <= 1:
                raise ValueError(f"{part!r}: top-p must be in (0, 1]")
        out.append(Decoding(policy, temperature, top_p))  # type: ignore[arg-type]
    if not out:
        raise ValueError("no worker spec given")
    return out


def decoding_problem(text: str) -> str | None:
    """What is wrong with a `--rollout-worker-decoding` value (None: fine)."""
    try:
        parse_decoding(text, (1.0, 1.0), 1.0)
    except ValueError as exc:
        return str(exc)
    return None


def worker_decodings(
    text: str | None, n: int, default_temperature: tuple[float, float], default_top_p: float
) -> list[Decoding]:
    """The decoding of each of `n` workers: the specs cycled."""
    specs = parse_decoding(text, default_temperature, default_top_p)
    return [specs[i % len(specs)] for i in range(n)]
