"""User SQL predicates (`--where`, mixture sources): one boolean expression, checked as such.

A predicate is pasted into queries spo builds (`... WHERE (base) AND (<predicate>) AND
p.split = 'train'`), so text that is not exactly one expression could escape them: a `;`
starting a second statement (`COPY ... TO` wrote a file), a `)` closing the surrounding
parenthesis (a mixture source dropped its split, reliability and q0 filters), a comment eating
the rest of the query, or a subquery reading a file. `check_predicate` uses DuckDB's own
parser (`json_serialize_sql`) and accepts the text only when:
- `SELECT 1 FROM t WHERE <text>` is one plain SELECT whose only clause the text adds is the
  WHERE (no second statement, UNION, GROUP BY, ORDER BY, LIMIT, ...);
- the text parses to the same expression inside a parenthesis followed by more SQL (so no
  unbalanced parenthesis and no comment reaches past its end);
- every table it reads is a lake table (or a CTE it defines itself): no table function
  (`read_csv`, `read_text`, `glob`, ...) and no file or URL as a table.
Placeholders of mixture sources (`{run_id}`, ...) are filled in before the check
(`fill_placeholders`); other braces, such as a regex quantifier `{2,}`, stay as written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import duckdb

from spo_store.errors import SpoError

# Tables a predicate may read: the lake's tables and the in-memory index views spo queries.
READABLE_TABLES = frozenset(
    {
        "problems",
        "trajectories",
        "runs",
        "annotations",
        "metrics",
        "batches",
        "q0_estimates",
        "p_index",
        "t_index",
        "p",
        "t",
    }
)
_SENTINEL = "spo_predicate_end_sentinel"


def fill_placeholders(template: str, params: Mapping[str, str]) -> str:
    """`template` with each `{name}` of `params` replaced by its SQL text; other braces (a
    regex quantifier `{2,}`, a struct literal) are left alone. Raises SpoError for a
    `{identifier}` that names no known placeholder (a typo of one)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in params:
            return params[name]
        raise SpoError(
            f"unknown placeholder {{{name}}}; placeholders: "
            + ", ".join("{" + k + "}" for k in params)
        )

    # Only `{identifier}` outside string literals is a placeholder.
    out, pos = [], 0
    for lit in re.finditer(r"'(?:[^']|'')*'", template):
        out.append(re.sub(r"\{([A-Za-z_]\w*)\}", sub, template[pos : lit.start()]))
        out.append(lit.group(0))
        pos = lit.end()
    out.append(re.sub(r"\{([A-Za-z_]\w*)\}", sub, template[pos:]))
    return "".join(out)


def _parse(sql: str) -> dict[str, Any]:
    con = duckdb.connect()
    try:
        text = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchone()[0]
    finally:
        con.close()
    tree = json.loads(text)
    if tree.get("error"):
        raise ValueError(tree.get("error_message") or "not valid SQL")
    return tree


def _strip_locations(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _strip_locations(v) for k, v in node.items() if not k.startswith("query_location")
        }
    if isinstance(node, list):
        return [_strip_locations(v) for v in node]
    return node


def _walk(node: Any) -> Iterable[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _only_where(node: dict[str, Any]) -> bool:
    """Whether a parsed `SELECT 1 FROM t WHERE x` holds nothing but that WHERE."""
    return (
        node.get("type") == "SELECT_NODE"
        and node.get("where_clause") is not None
        and not node.get("modifiers")
        and not node.get("group_expressions")
        and not (node.get("group_sets") or [])
        and node.get("having") is None
        and node.get("qualify") is None
        and node.get("sample") is None
        and not (node.get("cte_map") or {}).get("map")
        and len(node.get("select_list") or []) == 1
        and (node.get("from_table") or {}).get("type") == "BASE_TABLE"
    )


def check_predicate(text: str, what: str) -> str:
    """Return `text` when it is one SQL boolean expression reading only lake tables.

    `what` names it in errors (`--where`, `source 'mine'`). Raises SpoError, one line, for a
    second statement, a clause beyond the expression, an unbalanced parenthesis, a comment
    reaching past the end, or a table function / file / URL read. It does not check that the
    columns exist: the query the command runs says that (its error names `what` too).
    """
    if not isinstance(text, str) or not text.strip():
        raise SpoError(f"{what}: empty predicate; give one SQL boolean expression")
    if "\0" in text:
        raise SpoError(f"{what}: NUL character in the predicate")
    alone = f"SELECT 1 FROM t WHERE {text}"
    try:
        statements = duckdb.connect().extract_statements(alone)
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise SpoError(f"{what}: not one SQL boolean expression ({first})") from None
    if len(statements) != 1:
        raise SpoError(
            f"{what}: a predicate is one boolean expression, not several statements (found "
            f"{len(statements)}: remove the ';')"
        )
    try:
        tree = _parse(alone)
    except ValueError as exc:
        raise SpoError(f"{what}: not one SQL boolean expression ({exc})") from None
    try:
        inside = _parse(f"SELECT spo_check(({text}), {_SENTINEL}) FROM t")
    except ValueError:
        inside = {}
    nodes = tree.get("statements") or []
    node = nodes[0].get("node", {}) if len(nodes) == 1 else {}
    if not _only_where(node):
        raise SpoError(
            f"{what}: a predicate is one boolean expression; it may not add clauses "
            "(UNION, GROUP BY, ORDER BY, LIMIT, ...) or statements"
        )
    expr = _strip_locations(node["where_clause"])
    try:
        call = inside["statements"][0]["node"]["select_list"][0]
        args = [a.get("expression", a) for a in call.get("arguments", call.get("children", []))]
        ok = (
            len(inside["statements"]) == 1
            and call.get("function_name") == "spo_check"
            and len(args) == 2
            and _strip_locations(args[0]) == expr
            and args[1].get("column_names") == [_SENTINEL]
        )
    except (KeyError, IndexError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise SpoError(
            f"{what}: not one self-contained expression (an unbalanced parenthesis or a "
            "comment reaching past its end?)"
        )
    ctes = {
        name
        for n in _walk(node["where_clause"])
        for name in ((n.get("cte_map") or {}).get("map") or [])
        if isinstance(name, dict)
        for name in [name.get("key")]
    }
    for n in _walk(node["where_clause"]):
        kind = n.get("type")
        if kind == "TABLE_FUNCTION":
            fn = (n.get("function") or {}).get("function_name", "?")
            raise SpoError(
                f"{what}: reads with table function {fn}(): only lake tables may be read"
            )
        if kind == "BASE_TABLE":
            name = str(n.get("table_name", ""))
            if name.lower() not in READABLE_TABLES and name not in ctes:
                raise SpoError(
                    f"{what}: reads {name!r}, which is not a lake table (tables: "
                    + ", ".join(sorted(READABLE_TABLES - {"p", "t"}))
                    + ")"
                )
    return text
