"""What a problem row says about how to judge it: float tolerance, platform, judge issues.

Pure functions of text and of `problems` rows (schema v2 columns), no torch, no I/O: ingest
calls `annotate_problem` on every new row, `spo lake audit --update` and the v1 -> v2 migration
call it on stored rows, so a rule fixed here can be re-applied to a whole lake.

Sources the rules follow:
- Codeforces, CodeChef and AtCoder state float checking in a few standard phrasings ("Your
  answer is considered correct if its absolute or relative error does not exceed 10^{-6}",
  "error of at most 10^-2", "within 10^{-9}", ...); `tolerance_from_statement` reads them,
  including the flattened "10-6" that HTML-to-text conversion leaves of a superscript.
- Where a statement says nothing, APPS's and TACO's own evaluators (`testing_util.run_test`)
  accept float outputs when `np.allclose(actual, expected)` holds, i.e. rtol 1e-5 (atol 1e-8).
  `DEFAULT_FLOAT_TOLERANCE` takes that rtol; the judge applies it as |a-e| <= tol*max(1,|e|)
  and only where the expected token is a non-integer decimal (has '.' or an exponent), so
  integer answers stay exact.
- CodeContests' `source` is its proto enum (0 unknown, 1 CodeChef, 2 Codeforces, 3 HackerEarth,
  4 CodeJam, 5 AtCoder, 6 Aizu); TACO names its source site in `source` and `url`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

# APPS/TACO evaluators: np.allclose's rtol (see module doc).
DEFAULT_FLOAT_TOLERANCE = 1e-5

# judge_issue reasons this module derives from a row; any other stored reason (labels_disagree
# from `--verify`, unsupported_io from ingest) is evidence the row alone cannot recreate, so
# `annotate_problem` keeps it.
DERIVED_REASONS = ("no_tests", "interactive", "unsupported_limits", "multiple_answers")
# Most severe first: a row gets one judge_issue, the first that applies.
REASON_ORDER = (
    "no_tests",
    "interactive",
    "unsupported_io",
    "unsupported_limits",
    "labels_disagree",
    "multiple_answers",
)

CC_PLATFORMS = {
    1: "codechef",
    2: "codeforces",
    3: "hackerearth",
    4: "codejam",
    5: "atcoder",
    6: "aizu",
}
# TACO `source` values and URL hosts -> platform.
_SITE_PLATFORMS = {
    "codeforces": "codeforces",
    "codechef": "codechef",
    "atcoder": "atcoder",
    "aizu": "aizu",
    "hackerearth": "hackerearth",
    "hackerrank": "hackerrank",
    "codewars": "codewars",
    "leetcode": "leetcode",
    "geeksforgeeks": "geeksforgeeks",
    "kattis": "kattis",
    "codejam": "codejam",
    "judge.u-aizu": "aizu",
}

# --------------------------------------------------------------------------- float tolerance
_MINUS = "-\u2212\u2013\u2014"  # ASCII, minus sign, en and em dash (flattened superscripts)
_TOL_CONTEXT = re.compile(
    r"error|precision|toleran|differ|accura|within|deviat|approximat", re.IGNORECASE
)
_TOL_NUMBER = re.compile(
    # 10^{-6}, 10^-6, 10^(-6), 10 ^ - 6, 10−6 (flattened), optionally with a mantissa k·10^-6
    rf"(?:(?P<mant>\d+(?:\.\d+)?)\s*(?:\*|x|×|·|⋅|\\cdot|\\times)\s*)?"
    rf"10\s*(?:\^|\*\*)?\s*[({{]?\s*[{_MINUS}]\s*(?P<exp>\d{{1,2}})\s*[)}}]?(?!\d|\.\d)"
    # 1e-6, 1.0E-6, 2.5e−9
    rf"|(?P<emant>\d+(?:\.\d+)?)[eE]\s*[{_MINUS}]\s*(?P<eexp>\d{{1,2}})(?!\d)"
    # 0.000001, .0001
    rf"|(?<![\d.])(?P<dec>0?\.0*[1-9]\d*)(?!\d|\.\d)"
)


def _normalise(text: str) -> str:
    # TeX and HTML wrappers around the number: $10^{-6}$, <sup>-6</sup>, 10<sup>−6</sup>
    text = re.sub(r"</?sup>", "^", text, flags=re.IGNORECASE)
    text = text.replace("$", " ").replace("\\,", "").replace("\\!", "")
    return text.replace("^^", "^")


def tolerance_from_statement(text: str | None) -> float | None:
    """The absolute-or-relative float error a statement allows, or None when it states none.

    Reads sentences that speak of error/precision/tolerance ("absolute or relative error does
    not exceed 10^{-6}", "$10^{-4}$", "1e-6", "10-6" as flattened text, "within 10^-9", CodeChef's
    "error of at most 10^-2", "k·10^-6") and returns the number they name, e.g. 1e-6. Only values
    in (0, 0.5] count (written-out decimals: (0, 0.01]), so constraints like "1 ≤ n ≤ 10^9"
    never do; the number must follow such words within its paragraph (200 characters, 60 for a
    written-out decimal). Several stated values: the smallest (the strictest) wins.
    """
    if not text:
        return None
    found: list[float] = []
    text = _normalise(text)
    for m in _TOL_NUMBER.finditer(text):
        # The words before the number (same paragraph) must speak of error or precision; a bare
        # decimal must follow them closely ("precision 0.000001").
        reach = 60 if m.group("dec") is not None else 200
        before = text[max(0, m.start() - reach) : m.start()].rsplit("\n\n", 1)[-1]
        if not _TOL_CONTEXT.search(before):
            continue
        value = _match_value(m)
        # A decimal written out is a tolerance only when small (0.01, 0.000001); larger ones
        # near the word "error" are more often data.
        limit = 0.01 if m.group("dec") is not None else 0.5
        if value is not None and 0 < value <= limit and math.isfinite(value):
            found.append(value)
    return min(found) if found else None


def _match_value(m: re.Match[str]) -> float | None:
    try:
        if m.group("exp") is not None:
            return float(m.group("mant") or 1) * 10.0 ** -int(m.group("exp"))
        if m.group("eexp") is not None:
            return float(m.group("emant")) * 10.0 ** -int(m.group("eexp"))
        return float(m.group("dec"))
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- judge issues
# Most telling first: the detail quotes the first of these that matches.
_INTERACTIVE = [
    re.compile(p, re.IGNORECASE | re.MULTILINE)
    for p in (
        r"\binteractive\s+(?:problem|task)\b",
        r"^\s*interaction\s*$",
        r"flush(?:ing)? (?:the |your )?output|\bfflush\s*\(\s*stdout|stdout\.flush\s*\(\)",
        r"\binteractor\b",
    )
]
_ANSWER = r"(?:answers?|solutions?)\b"
_MULTIPLE = re.compile(
    # "print any of them", "output any", "you can print any", "any valid answer"
    r"\b(?:print|output|write|return)\s+any\b"
    r"|\b(?:print|output|write|return)\b[^.]{0,40}?\bin\s+any\s+order\b"
    r"|\bany\s+(?:valid|possible|correct|suitable|such|optimal|acceptable)\s+"
    + _ANSWER
    # "if there are several answers, you may output any" (a tie-break rule instead of "any"
    # makes the answer unique: 127_C "If there are several optimal variants, Bob chooses ...")
    + r"|\b(?:if|when)\s+there\s+(?:are|is|exist)\s+(?:several|multiple|many|more\s+than\s+one)"
    r"[^.]{0,80}?\bany\b"
    r"|\bany\s+(?:one\s+)?of\s+them\s+(?:will\s+be|is|are)\s+(?:accepted|considered|correct)"
    r"|\b(?:answer|solution)\s+is\s+not\s+(?:necessarily\s+)?unique"
    r"|\bnot\s+necessarily\s+unique",
    re.IGNORECASE,
)
# Yes/No followed by a construction ("print YES in the first line and the array ...", "In case
# your answer is "Yes", print n integers ..."): the construction is rarely unique.
_YES_CONSTRUCTION = re.compile(
    r"print\s+[\"'“]?yes[\"'”]?\s+(?:in|on)\s+the\s+first\s+line\s+and\s+(?![\"'“]?no\b)"
    r"|(?:if|in\s+case|when)\s+(?:the\s+|your\s+)?answer\s+is\s+[\"'“]?yes[\"'”]?,?\s+"
    r"(?:then\s+)?(?:also\s+)?(?:print|output)",
    re.IGNORECASE,
)


def judge_issue_from_statement(text: str | None) -> str | None:
    """Why token comparison against the reference output cannot judge this statement, or None.

    Returns '<reason>: <detail>' with reason `interactive` ("This is an interactive problem",
    an "Interaction" section, "flush the output") or `multiple_answers` ("print any of them",
    "If there are multiple answers, print any", "any valid answer", "output any", "the answer is
    not unique", or a YES/Yes answer followed by a construction to print); the detail quotes
    the phrase that matched.
    """
    if not text:
        return None
    m = next((m for p in _INTERACTIVE if (m := p.search(text))), None)
    if m:
        return f"interactive: statement says {_quote(m.group(0))}"
    m = _MULTIPLE.search(text) or _YES_CONSTRUCTION.search(text)
    if m:
        return f"multiple_answers: statement says {_quote(m.group(0))}"
    return None


def _quote(phrase: str) -> str:
    return '"' + " ".join(phrase.split())[:80] + '"'


# --------------------------------------------------------------------------- limits
TIME_LIMIT_RANGE_S = (0.01, 60.0)
"""Per-test CPU limits spo stores and judges, in seconds. Contest judges set 0.25-15 s (Code Jam
up to 60 s per test set); below 10 ms not even an interpreter starts. Outside: bad input."""
MEMORY_LIMIT_RANGE_MB = (1, 65536)
"""Memory limits spo stores and judges, in MiB (1 MiB to 64 GiB; contest judges give 16 MiB
to 2 GiB). Outside: bad input (a `memory_limit_mb` of 1e12 cannot even be stored)."""


def limit_range_error(what: str, value: float) -> str | None:
    """Why `value` is no time (`what='time'`, seconds) or memory (`'memory'`, MiB) limit spo
    judges with (see the ranges above), else None."""
    lo, hi = TIME_LIMIT_RANGE_S if what == "time" else MEMORY_LIMIT_RANGE_MB
    unit = "s" if what == "time" else "MiB"
    if not (math.isfinite(value) and lo <= value <= hi):
        return f"{value:g} {unit} is outside {lo:g}..{hi:g} {unit}"
    return None


_SECONDS = {
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "ms": 1e-3,
    "msec": 1e-3,
    "millisecond": 1e-3,
    "milliseconds": 1e-3,
}
_MEBIBYTES = {
    "": 1.0,  # a bare number: MB, as every judge that prints one means
    "m": 1.0,
    "mb": 1.0,
    "mib": 1.0,
    "megabyte": 1.0,
    "megabytes": 1.0,
    "mbytes": 1.0,
    "k": 1 / 1024,
    "kb": 1 / 1024,
    "kib": 1 / 1024,
    "kilobyte": 1 / 1024,
    "kilobytes": 1 / 1024,
    "g": 1024.0,
    "gb": 1024.0,
    "gib": 1024.0,
    "gigabyte": 1024.0,
    "gigabytes": 1024.0,
    "b": 1 / (1024 * 1024),
    "bytes": 1 / (1024 * 1024),
}
_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\.?\s*$")


def parse_time_limit_s(value: Any) -> float | None:
    """Seconds from a limit like 2, "2 seconds", "1.5 s", "1000 ms"; None when unparseable.

    Numbers are seconds. A string must be one positive number with an optional unit (s, sec,
    second(s), ms, millisecond(s)); anything else (ranges, "N/A", several numbers) is None, and
    so is a limit outside `TIME_LIMIT_RANGE_S`.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _LIMIT.match(value)
        if not m or m.group(2).lower() not in _SECONDS:
            return None
        seconds = float(m.group(1)) * _SECONDS[m.group(2).lower()]
    else:
        return None
    return None if limit_range_error("time", seconds) else seconds


def parse_memory_limit_mb(value: Any) -> int | None:
    """MiB from a limit like 256, "256 megabytes", "512 MB", "64 MiB", "1 GB"; None if unparseable.

    Numbers are MiB (as the `memory_limit_mb` column). Judges' "MB" and "megabytes" are taken as
    MiB (Codeforces' 256 megabytes is 256 MiB). Results outside `MEMORY_LIMIT_RANGE_MB` or not a
    whole string of one number and a unit are None.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        mb = float(value)
    elif isinstance(value, str):
        m = _LIMIT.match(value)
        if not m or m.group(2).lower() not in _MEBIBYTES:
            return None
        mb = float(m.group(1)) * _MEBIBYTES[m.group(2).lower()]
    else:
        return None
    if limit_range_error("memory", mb):
        return None
    return int(value) if isinstance(value, int | float) else int(round(mb))


# --------------------------------------------------------------------------- platform
def platform_from_code_contests(source: Any) -> str | None:
    """CodeContests' `source` enum (1 CodeChef, 2 Codeforces, ...) as a platform name."""
    try:
        return CC_PLATFORMS.get(int(source))
    except (TypeError, ValueError):
        return None


def platform_from_site(source: Any = None, url: Any = None) -> str | None:
    """A platform from a site name (TACO `source`) or a problem URL; None when unknown."""
    for text in (source, url):
        if not isinstance(text, str) or not text.strip():
            continue
        low = text.strip().lower()
        for key, platform in _SITE_PLATFORMS.items():
            if key in low:
                return platform
    return None


# --------------------------------------------------------------------------- rows
def _extra(row: Mapping[str, Any]) -> dict[str, Any]:
    raw = row.get("extra")
    if isinstance(raw, dict):
        return raw
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _num_tests(row: Mapping[str, Any]) -> int | None:
    counts = []
    for kind in ("public_tests", "private_tests", "generated_tests"):
        block = row.get(kind)
        if isinstance(block, Mapping):
            counts.append(len(block.get("input") or []))
    if counts:
        return sum(counts)
    n = row.get("num_tests")
    return None if n is None else int(n)


def _limit_issue(extra: Mapping[str, Any]) -> str | None:
    # The dataset's own limit strings (TACO keeps them in extra) that could not be read.
    for key, parse in (("time_limit", parse_time_limit_s), ("memory_limit", parse_memory_limit_mb)):
        raw = extra.get(key)
        if isinstance(raw, str) and raw.strip() and parse(raw) is None:
            return f"unsupported_limits: {key} {raw.strip()[:60]!r} is not a limit spo can read"
    return None


def reason_of(judge_issue: str | None) -> str | None:
    """The reason part of a judge_issue ('multiple_answers: ...' -> 'multiple_answers')."""
    if not judge_issue:
        return None
    return judge_issue.split(":", 1)[0].strip() or None


def annotate_problem(row: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the problems row with platform, float tolerance and judge_issue filled in.

    - platform: kept when set; else from CodeContests' `source` enum or TACO's `source`/`url`
      (read from the row's `extra` JSON), per `source_dataset`.
    - input_file / output_file: kept when set; else from `extra` (where schema v1 kept
      CodeContests' columns); empty strings mean none (NULL).
    - float_tolerance: a tolerance whose source is 'dataset' or 'user' (or one with no source,
      as v1 rows and JSONL give it) is kept as 'dataset'; otherwise the statement's
      (`tolerance_from_statement`, source 'statement'), else `DEFAULT_FLOAT_TOLERANCE` (source
      'default').
    - judge_issue: derived reasons (`DERIVED_REASONS`) are recomputed: no tests ->
      'no_tests: ...'; unreadable limit strings in `extra` -> 'unsupported_limits: ...';
      the statement -> 'interactive: ...' or 'multiple_answers: ...' (not when the row has a
      `checker`, which judges any valid answer). A stored issue with another reason
      (labels_disagree, unsupported_io) is kept. The most severe (`REASON_ORDER`) wins.
    Tests are counted from the test columns when present, else from `num_tests`.
    """
    out = dict(row)
    extra = _extra(row)
    dataset = (row.get("source_dataset") or "").lower()

    if not out.get("platform"):
        platform = None
        if "source" in extra and isinstance(extra["source"], int | float):
            platform = platform_from_code_contests(extra["source"])
        if platform is None and dataset != "code_contests":
            platform = platform_from_site(extra.get("source"), extra.get("url"))
        out["platform"] = platform
    for key in ("input_file", "output_file"):
        value = out.get(key) or extra.get(key)
        out[key] = value.strip() if isinstance(value, str) and value.strip() else None

    tol, tol_source = out.get("float_tolerance"), out.get("float_tolerance_source")
    if tol is not None and tol_source in (None, "dataset", "user"):
        out["float_tolerance_source"] = tol_source or "dataset"
    else:
        stated = tolerance_from_statement(out.get("statement"))
        if stated is not None:
            out["float_tolerance"], out["float_tolerance_source"] = stated, "statement"
        else:
            out["float_tolerance"] = DEFAULT_FLOAT_TOLERANCE
            out["float_tolerance_source"] = "default"

    issues: list[str] = []
    kept = out.get("judge_issue")
    if kept and reason_of(kept) not in DERIVED_REASONS:
        issues.append(kept)
    n_tests = _num_tests(out)
    if n_tests == 0:
        issues.append("no_tests: the dataset gives no test for this problem")
    limit = _limit_issue(extra)
    if limit:
        issues.append(limit)
    stated_issue = judge_issue_from_statement(out.get("statement"))
    if stated_issue and not (reason_of(stated_issue) == "multiple_answers" and out.get("checker")):
        issues.append(stated_issue)
    issues.sort(key=lambda s: reason_severity(reason_of(s)))
    out["judge_issue"] = issues[0] if issues else None
    return out


def reason_severity(reason: str | None) -> int:
    """Rank of a reason in REASON_ORDER (0 = most severe; unknown reasons last)."""
    return REASON_ORDER.index(reason) if reason in REASON_ORDER else len(REASON_ORDER)
