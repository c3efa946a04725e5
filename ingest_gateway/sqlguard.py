"""Read-only, contained SQL for ``goalstream sql`` and ``POST /admin/v1/sql``.

Flow: the caller's text -> ClickHouse canonicalises it (``formatQuerySingleLine`` with the
text bound as a query parameter: parsed, never executed; a second statement is a parse
error) -> the canonical text must format to itself, so it is provably one statement ->
``EXPLAIN AST`` of it (parsed again, not executed) -> an allow-list walk of that tree:
statement kinds, node kinds, tables and views for the caller's scope, table functions,
and scalar functions by their ``system.functions`` category -> what runs is the canonical
text with our own ``SETTINGS`` appended: ``readonly``, the limits, and for a workspace
``additional_table_filters`` that confine every read of every base table (through views,
joins, subqueries and unions too) to that workspace's rows.

Why not a regex: chDB runs every statement of a call, and ClickHouse's lexer knows quoting,
comments (``#``, ``--``, ``/* */``), heredocs and Unicode whitespace that a regex does not.
Why an allow-list on top of ``readonly=1``: readonly does not stop the ``file()`` scalar
function, ``merge()`` or ``INTO OUTFILE``. Anything the walk does not know is refused.

Everything here is synchronous and runs on the warehouse's admin lane (or in
``goalstream sql``'s own process): ``client`` is a clickhouse-connect client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator

MAX_SQL_BYTES = 100_000
FORMATS = re.compile(r"^[A-Za-z0-9]+$")

# What the walk accepts at the root of a SELECT's tree, and the EXPLAIN forms (of a SELECT).
SELECT_ROOT = "SelectWithUnionQuery"
EXPLAIN_KINDS = {"EXPLAIN", "EXPLAIN PLAN", "EXPLAIN AST", "EXPLAIN SYNTAX"}

# Every AST node kind an analyst query needs; any other kind (SETTINGS = "Set", query
# parameters, DDL, INSERT, ...) is refused with its name.
NODE_KINDS = {
    "SelectWithUnionQuery", "SelectIntersectExceptQuery", "SelectQuery", "ExpressionList", "WithElement",
    "Subquery", "Literal", "Identifier", "Function", "TablesInSelectQuery", "TablesInSelectQueryElement",
    "TableExpression", "TableIdentifier", "TableJoin", "ArrayJoin", "Asterisk", "QualifiedAsterisk",
    "ColumnsRegexpMatcher", "ColumnsListMatcher", "QualifiedColumnsRegexpMatcher", "QualifiedColumnsListMatcher",
    "ColumnsTransformerList", "ColumnsApplyTransformer", "ColumnsExceptTransformer", "ColumnsReplaceTransformer",
    "ColumnsReplaceTransformerReplacement",
    "OrderByElement", "WindowDefinition", "WindowListElement", "SampleRatio", "InterpolateElement",
    "DataType", "NameTypePair", "ColumnDeclaration", "Alias", "LimitByElement",
}

# Table functions (a Function directly under a TableExpression): only these, and `numbers`
# only with literal arguments under the read limit (see _check_numbers).
TABLE_FUNCTIONS = {"numbers", "values"}

# system.* tables the operator may read: metadata about goalstream's own tables. Never a
# workspace: they describe every tenant's data. (system.one is what FROM-less SELECTs read.)
SYSTEM_TABLES = {
    "tables", "columns", "parts", "parts_columns", "databases", "functions", "table_functions", "formats",
    "data_type_families", "settings", "one", "merges", "mutations", "table_engines", "build_options",
}

# Scalar function categories (system.functions.categories) that compute on their
# arguments only. The rest ("Other", "Internal", "Dictionary", "Embedded Dictionary",
# "AI", "Introspection", "Machine Learning", uncategorised) reach files, the network,
# dictionaries, models, settings or server internals, and are refused unless listed below.
SAFE_CATEGORIES = {
    "Arithmetic", "Arrays", "Bit", "Bitmap", "Comparison", "Conditional", "Dates and Times", "Distance",
    "Encoding", "Encryption", "Financial", "Geo", "Geo Polygon", "Hash", "IP Address", "JSON", "Logical",
    "Map", "Mathematical", "Null", "NumericIndexedVector", "QBit", "Random Number", "Rounding", "String",
    "String Replacement", "String Search", "String Splitting", "Time Window", "Tuple", "Type Conversion",
    "URL", "UUID", "Time Series",
}
# Pure helpers from "Other"/"Internal" that analysts use (each reviewed: no I/O, no state).
SAFE_EXTRA = {
    "bar", "countDigits", "currentDatabase", "defaultValueOfArgumentType", "defaultValueOfTypeName", "digits",
    "dumpColumnStructure", "finalizeAggregation", "formatReadableDecimalSize", "formatReadableQuantity",
    "formatReadableSize", "formatReadableTimeDelta", "getSubcolumn", "identity", "ignore", "initializeAggregation",
    "isConstant", "isDecimalOverflow", "materialize", "neighbor", "parseReadableSize", "parseReadableSizeOrNull",
    "parseReadableSizeOrZero", "parseTimeDelta", "parseISO8601Duration", "rowNumberInAllBlocks", "rowNumberInBlock",
    "runningAccumulate", "runningDifference", "runningDifferenceStartingWithFirstValue", "throwIf",
    "toColumnTypeName", "toTypeName", "transform", "variantElement", "variantType", "visibleWidth",
    "minSampleSizeContinuous", "minSampleSizeConversion", "MACNumToString", "MACStringToNum", "MACStringToOUI",
    "byteSize", "blockSize", "getSizeOfEnumType", "colorOKLABToSRGB", "colorOKLCHToSRGB", "colorSRGBToOKLAB",
    "colorSRGBToOKLCH", "flipCoordinates", "lowCardinalityIndices", "lowCardinalityKeys", "caseWithExpression",
    "_CAST", "version",
    # Written by the parser for syntax, not found in system.functions under these names:
    "lambda", "exists",
}
# Refused even inside a safe category: these keep process-wide state across queries.
DENIED = {"timeSeriesStoreTags", "timeSeriesIdToTags", "timeSeriesIdToGroup", "timeSeriesGroupToTags"}
# Aggregate function combinators, stripped to find the base aggregate (sumIf, uniqMerge, ...).
COMBINATORS = (
    "SimpleState", "MergeState", "State", "Merge", "If", "Array", "ArrayIf", "Map", "ForEach", "Distinct",
    "OrDefault", "OrNull", "Resample", "ArgMin", "ArgMax",
)
IN_FUNCTIONS = {
    "in", "notIn", "globalIn", "globalNotIn", "nullIn", "notNullIn", "globalNullIn", "globalNotNullIn",
    "inIgnoreSet", "notInIgnoreSet", "globalInIgnoreSet", "globalNotInIgnoreSet", "nullInIgnoreSet",
    "notNullInIgnoreSet", "globalNullInIgnoreSet", "globalNotNullInIgnoreSet",
}

# Views a workspace may read: each reads only base tables that carry `workspace` (so the
# per-base-table filter confines it). A new view must be added here deliberately; the
# unit tests fail while a view in the schema is neither here nor in OPERATOR_ONLY_VIEWS.
TENANT_VIEWS = {
    "events_typed", "customers_typed", "customer_identities", "goal_customers", "goal_conversion_by_cohort",
    "goal_action_completion", "customers_current", "events_daily", "goal_conversion_daily",
}
OPERATOR_ONLY_VIEWS: set[str] = set()
# Tables without a `workspace` column that a workspace may still read, and the filter that
# confines them: a dead letter's Kafka key is `workspace:customer_id` (workspace names
# cannot contain ':'); dead letters without a key (refused gateway requests) are the
# operator's only.
KEYED_TABLES = {"deadletters": "startsWith(ifNull(key, ''), {prefix})"}

# ClickHouse error codes of the limits, for a message naming the goalstream setting.
LIMIT_CODES = {159: "max_execution_s", 158: "max_rows_to_read", 307: "max_bytes_to_read", 396: "max_result_rows",
               241: "max_memory_bytes"}


class NotReadOnly(ValueError):
    """Refused before anything ran: the message says why (a 400 for the caller)."""


class LimitReached(ValueError):
    """The query ran into one of the per-query limits; the message names the setting."""


class QueryFailed(ValueError):
    """ClickHouse refused the (allowed) query: unknown column, type error, ... (a 400)."""


@dataclass(frozen=True)
class Limits:
    """Per-query limits, from schemas.settings (GOALSTREAM_SQL_*)."""

    max_execution_s: float = 10.0
    max_rows_to_read: int = 1_000_000_000
    max_bytes_to_read: int = 50_000_000_000
    max_result_rows: int = 1_000_000
    max_result_bytes: int = 512 * 1024 * 1024
    max_memory_bytes: int = 2 * 1024 * 1024 * 1024

    @classmethod
    def from_settings(cls, s: Any) -> "Limits":
        return cls(
            max_execution_s=s.sql_max_execution_s, max_rows_to_read=s.sql_max_rows_to_read,
            max_bytes_to_read=s.sql_max_bytes_to_read, max_result_rows=s.sql_max_result_rows,
            max_result_bytes=s.sql_max_result_bytes, max_memory_bytes=s.sql_max_memory_bytes,
        )

    def env_name(self, key: str) -> str:
        return "GOALSTREAM_SQL_" + key.upper()

    def value(self, key: str) -> Any:
        return getattr(self, key)


@dataclass(frozen=True)
class Scope:
    """Who asks: the operator (every workspace) or one workspace."""

    workspace: str | None = None

    @property
    def operator(self) -> bool:
        return self.workspace is None

    def __str__(self) -> str:
        return "operator" if self.operator else f"workspace {self.workspace!r}"


OPERATOR = Scope(None)


@dataclass
class Node:
    kind: str
    text: str  # the rest of the line: a name, a literal, "EXPLAIN AST", ...
    alias: str | None
    declared: int
    children: list["Node"] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.text

    def walk(self, parent: "Node | None" = None) -> Iterator[tuple["Node", "Node | None"]]:
        yield self, parent
        for c in self.children:
            yield from c.walk(self)


@dataclass
class Catalog:
    """What the engine has: functions by category, the current database's tables."""

    database: str
    functions: dict[str, tuple[bool, str]]  # name -> (is_aggregate, category), aliases resolved
    targets: dict[str, str]  # alias -> the function it names
    insensitive: dict[str, str]  # lower-case name -> name, for case-insensitive functions
    tables: dict[str, set[str]]  # table or view in the current database -> its columns
    engines: dict[str, str]
    formats: set[str]

    @classmethod
    def load(cls, client: Any) -> "Catalog":
        rows = client.query("SELECT name, is_aggregate, case_insensitive, alias_to, categories FROM system.functions").result_rows
        raw = {r[0]: (bool(r[1]), r[3], r[4]) for r in rows}
        functions: dict[str, tuple[bool, str]] = {}
        targets: dict[str, str] = {}
        for name in raw:
            target = name
            for _ in range(5):  # alias chains are short; a loop would stop here
                if raw[target][1] and raw[target][1] in raw:
                    target = raw[target][1]
                else:
                    break
            functions[name] = (raw[target][0], raw[target][2])
            targets[name] = target
        insensitive = {r[0].lower(): r[0] for r in rows if r[2]}
        db = client.command("SELECT currentDatabase()")
        cols = client.query(
            "SELECT table, groupArray(name) FROM system.columns WHERE database = currentDatabase() GROUP BY table"
        ).result_rows
        engines = dict(client.query("SELECT name, engine FROM system.tables WHERE database = currentDatabase()").result_rows)
        tables = {t: set(c) for t, c in cols}
        for t in engines:
            tables.setdefault(t, set())
        formats = {r[0] for r in client.query("SELECT name FROM system.formats WHERE is_output").result_rows}
        return cls(str(db), functions, targets, insensitive, tables, engines, formats)

    def target(self, name: str) -> str:
        return self.targets.get(name, name)

    def resolve(self, name: str) -> str | None:
        if name in self.functions:
            return name
        return self.insensitive.get(name.lower())

    def contained(self, table: str) -> bool:
        """May a workspace read this table or view (the filters confine it)?"""
        if self.engines.get(table) == "View":
            return table in TENANT_VIEWS
        return "workspace" in self.tables.get(table, set()) or table in KEYED_TABLES

    def filters(self, workspace: str) -> dict[str, str]:
        """additional_table_filters for a workspace: every base table, bare and qualified."""
        lit = quote(workspace)
        out = {}
        for table, columns in sorted(self.tables.items()):
            if self.engines.get(table) == "View":
                continue
            if "workspace" in columns:
                expr = f"workspace = {lit}"
            elif table in KEYED_TABLES:
                expr = KEYED_TABLES[table].format(prefix=quote(workspace + ":"))
            else:
                expr = "0"  # nothing of a table a workspace cannot be confined in
            out[table] = expr
            out[f"{self.database}.{table}"] = expr
        return out


def quote(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# -- lexing the canonical text -----------------------------------------------------------

_SAFE_QUOTED = re.compile(r"^[\w .\-:$@+/]*$")


def _lex_check(canonical: str) -> list[str]:
    """Check the canonical text's quoted names and brackets; return its bare words.

    ClickHouse's AST dump prints names raw, so a quoted name with a newline or "(children"
    could forge dump lines: names are limited to a safe alphabet. Brackets must balance
    (the text is embedded in ``EXPLAIN AST (...)``)."""
    words: list[str] = []
    depth = 0
    i, n = 0, len(canonical)
    while i < n:
        ch = canonical[i]
        if ch in "'`\"":
            j = i + 1
            buf = []
            while j < n and canonical[j] != ch:
                if canonical[j] == "\\":
                    buf.append(canonical[j : j + 2])
                    j += 2
                    continue
                buf.append(canonical[j])
                j += 1
            if j >= n:
                raise NotReadOnly("unterminated quote")
            if ch != "'" and not _SAFE_QUOTED.match("".join(buf)):
                raise NotReadOnly("quoted names may contain only letters, digits, spaces and . - : $ @ + /")
            i = j + 1
            continue
        if ord(ch) < 32 or ord(ch) == 127:
            raise NotReadOnly("control characters are not allowed outside string literals")
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise NotReadOnly("unbalanced brackets")
        elif ch.isalpha() or ch == "_":
            j = i
            while j < n and (canonical[j].isalnum() or canonical[j] == "_"):
                j += 1
            words.append(canonical[i:j].upper())
            i = j
            continue
        i += 1
    if depth:
        raise NotReadOnly("unbalanced brackets")
    return words


# -- the AST dump ------------------------------------------------------------------------

_LINE = re.compile(r"^(?P<indent> *)(?P<kind>[A-Za-z_]+)(?P<rest>.*?)(?: \(children (?P<n>\d+)\))?$")
_ALIAS = re.compile(r"^(?P<text>.*?)(?: \(alias (?P<alias>[^()]*)\))?$")


def parse_dump(lines: list[str]) -> Node:
    """The indented EXPLAIN AST text as a tree; refuses a dump whose counts do not add up."""
    root: Node | None = None
    stack: list[tuple[int, Node]] = []
    for line in lines:
        m = _LINE.match(line)
        if not m:
            raise NotReadOnly("the query could not be checked (unexpected parse tree)")
        depth = len(m["indent"])
        rest = m["rest"].strip()
        a = _ALIAS.match(rest)
        node = Node(m["kind"], a["text"].strip(), a["alias"], int(m["n"] or 0))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if not stack:
            if root is not None or depth != 0:
                raise NotReadOnly("the query could not be checked (more than one statement)")
            root = node
        else:
            if depth != stack[-1][0] + 1:
                raise NotReadOnly("the query could not be checked (unexpected parse tree)")
            stack[-1][1].children.append(node)
        stack.append((depth, node))
    if root is None:
        raise NotReadOnly("empty query")
    for node, _ in root.walk():
        if len(node.children) != node.declared:
            raise NotReadOnly("the query could not be checked (unexpected parse tree)")
    return root


# -- the check ---------------------------------------------------------------------------


@dataclass
class Checked:
    canonical: str
    kind: str  # "select", "union", "show", "describe", "exists", "explain"
    tables: set[str]
    prefix: str = ""  # EXPLAIN [AST|SYNTAX|PLAN]
    inner_kind: str = ""  # what EXPLAIN explains: "select" or "union"


def _engine_error(exc: Exception) -> str:
    msg = str(exc)
    m = re.search(r"DB::Exception: (.*)", msg, re.S)
    msg = (m[1] if m else msg).strip()
    msg = re.split(r"\. : In scope | \(version \d", msg)[0]
    msg = re.sub(r"\s+", " ", msg)
    return msg[:500]


def _code(exc: Exception) -> int | None:
    m = re.search(r"Code: (\d+)", str(exc))
    return int(m[1]) if m else None


def canonicalise(client: Any, sql: str) -> str:
    if not isinstance(sql, str):
        raise NotReadOnly("the query must be text")
    if "\x00" in sql:
        raise NotReadOnly("NUL characters are not allowed")
    if len(sql.encode("utf-8", "surrogatepass")) > MAX_SQL_BYTES:
        raise NotReadOnly(f"the query is longer than {MAX_SQL_BYTES} bytes")
    if not sql.strip() or not sql.strip().strip(";").strip():
        raise NotReadOnly("empty query")
    try:
        canonical = client.query("SELECT formatQuerySingleLine({q:String})", parameters={"q": sql}).result_rows[0][0]
        again = client.query("SELECT formatQuerySingleLine({q:String})", parameters={"q": canonical}).result_rows[0][0]
    except Exception as exc:
        msg = _engine_error(exc)
        if "Multi-statements" in msg:
            raise NotReadOnly("one statement at a time") from None
        raise NotReadOnly(f"not a valid query: {msg}") from None
    if again != canonical or not canonical:
        raise NotReadOnly("the query could not be checked (it does not have one canonical form)")
    return canonical


_NAME = r"(?P<name>(?:[A-Za-z_][A-Za-z0-9_]*\.)?[A-Za-z_][A-Za-z0-9_]*)"
_DESCRIBE = re.compile(r"^DESCRIBE TABLE " + _NAME + "$")
_EXISTS = re.compile(r"^EXISTS TABLE " + _NAME + "$")
_EXPLAIN = re.compile(r"^(?P<kind>EXPLAIN(?: AST| SYNTAX| PLAN)?) (?P<inner>(?:SELECT|WITH|\().*)$")


def check(client: Any, sql: str, scope: Scope, catalog: Catalog, limits: Limits | None = None) -> Checked:
    """Raise NotReadOnly unless ``sql`` is one statement the allow-list accepts for ``scope``."""
    limits = limits or Limits()
    canonical = canonicalise(client, sql)
    words = _lex_check(canonical)
    if not scope.operator and "PREWHERE" in words:
        # A PREWHERE runs before the workspace filter: its errors would show other rows.
        raise NotReadOnly("PREWHERE is not allowed for a workspace (use WHERE)")
    if canonical == "SHOW TABLES":
        return Checked(canonical, "show", set())
    for kind, pattern in (("describe", _DESCRIBE), ("exists", _EXISTS)):
        if m := pattern.match(canonical):
            _table_allowed(m["name"], scope, catalog)  # a name that is no table: EXISTS says 0
            return Checked(canonical, kind, {m["name"]})
    if m := _EXPLAIN.match(canonical):
        if m["kind"] not in EXPLAIN_KINDS:
            raise NotReadOnly(f"{m['kind']} is not allowed")
        inner = _check_select(client, m["inner"], scope, catalog, limits)
        return Checked(canonical, "explain", inner.tables, prefix=m["kind"], inner_kind=inner.kind)
    if words and words[0] in ("SELECT", "WITH") or canonical.startswith("("):
        return _check_select(client, canonical, scope, catalog, limits)
    verb = words[0] if words else canonical[:20]
    if verb == "EXPLAIN":
        raise NotReadOnly("only EXPLAIN, EXPLAIN AST and EXPLAIN SYNTAX of a SELECT, without options, are allowed")
    raise NotReadOnly(
        "only read queries are allowed (SELECT, WITH ... SELECT, SHOW TABLES, DESCRIBE TABLE, EXISTS TABLE, "
        f"EXPLAIN [AST|SYNTAX] SELECT), not {verb}"
    )


def _check_select(client: Any, canonical: str, scope: Scope, catalog: Catalog, limits: Limits) -> Checked:
    # In a subquery, EXPLAIN AST refuses FORMAT/INTO OUTFILE and shows the query alone
    # (at the top level the dump would end with the output format, ours or the caller's).
    try:
        lines = [r[0] for r in client.query(f"SELECT explain FROM (EXPLAIN AST {canonical})").result_rows]
    except Exception as exc:
        msg = _engine_error(exc)
        if "output options" in msg:
            raise NotReadOnly("FORMAT and INTO OUTFILE clauses are not allowed (choose the output format with ?format= / --format)") from None
        raise NotReadOnly(f"not an allowed query: {msg}") from None
    root = parse_dump(lines)
    if root.kind != SELECT_ROOT:
        raise NotReadOnly(f"only read queries are allowed, not {root.kind}")
    if [c.kind for c in root.children] != ["ExpressionList"]:
        raise NotReadOnly("INTO OUTFILE, FORMAT and SETTINGS clauses are not allowed")
    parts = root.children[0].children
    kind = "select" if len(parts) == 1 and parts[0].kind == "SelectQuery" else "union"
    tables: set[str] = set()
    for node, parent in root.walk():
        _check_node(node, parent, scope, catalog, limits, tables)
    return Checked(canonical, kind, tables)


def _table_allowed(name: str, scope: Scope, catalog: Catalog, cte_ok: bool = True) -> None:
    db, _, table = name.rpartition(".")
    if db == "system" and (table == "one" or (table in SYSTEM_TABLES and scope.operator)):
        return
    if db in ("", catalog.database):
        if table in catalog.tables:
            if scope.operator or catalog.contained(table):
                return
            raise NotReadOnly(f"table {table!r} is not available to a workspace")
        if not db and cte_ok:
            return  # no such table here: a WITH name (CTE), or the engine says unknown table
    raise NotReadOnly(f"table {name!r} is not allowed" + ("" if scope.operator else " for a workspace"))


def _check_node(node: Node, parent: Node | None, scope: Scope, catalog: Catalog, limits: Limits, tables: set[str]) -> None:
    kind = node.kind
    if kind in ("Set", "SetQuery"):
        raise NotReadOnly("SETTINGS clauses are not allowed")
    if kind not in NODE_KINDS:
        raise NotReadOnly(f"{kind} is not allowed in a read-only query")
    if kind == "TableIdentifier":
        _table_allowed(node.name, scope, catalog)
        tables.add(node.name)
        return
    if kind != "Function":
        return
    name = node.name
    if parent is not None and parent.kind == "TableExpression":
        if name not in TABLE_FUNCTIONS:
            raise NotReadOnly(f"table function {name!r} is not allowed (only {', '.join(sorted(TABLE_FUNCTIONS))})")
        if name == "numbers":
            _check_numbers(node, limits)
        return
    _check_function(name, catalog)
    if name in IN_FUNCTIONS and node.children and len(node.children[0].children) == 2:
        right = node.children[0].children[1]
        if right.kind == "Identifier":
            # `x IN t`: t may be a table; the same rule as FROM t.
            _table_allowed(right.name, scope, catalog)


def _check_function(name: str, catalog: Catalog) -> None:
    if name in ("lambda", "exists"):
        return
    resolved = catalog.resolve(name)
    base = resolved
    if resolved is None:
        base = _strip_combinators(name, catalog)
        if base is None:
            raise NotReadOnly(f"unknown or unsupported function {name!r}")
    target = catalog.target(base)
    agg, category = catalog.functions[base]
    if base in DENIED or target in DENIED:
        raise NotReadOnly(f"function {name!r} is not allowed")
    if agg or category in SAFE_CATEGORIES or base in SAFE_EXTRA or target in SAFE_EXTRA:
        return
    raise NotReadOnly(f"function {name!r} is not allowed in a read-only query (it reaches files, the network, dictionaries, models or server state)")


def _strip_combinators(name: str, catalog: Catalog) -> str | None:
    current = name
    for _ in range(4):
        for suffix in COMBINATORS:
            if current.endswith(suffix) and len(current) > len(suffix):
                stem = current[: -len(suffix)]
                resolved = catalog.resolve(stem)
                if resolved is not None and catalog.functions[resolved][0]:
                    return resolved
        stripped = next((current[: -len(s)] for s in COMBINATORS if current.endswith(s) and len(current) > len(s)), None)
        if stripped is None:
            return None
        current = stripped
    return None


def _check_numbers(node: Node, limits: Limits) -> None:
    args = node.children[0].children if node.children else []
    values = []
    for a in args:
        m = re.fullmatch(r"(?:UInt64|Int64)_(-?\d+)", a.text) if a.kind == "Literal" else None
        if not m:
            raise NotReadOnly("numbers() takes integer literals only")
        values.append(int(m[1]))
    # numbers(count), numbers(offset, count), numbers(offset, count, step)
    count = None if len(values) not in (1, 2, 3) else values[0] if len(values) == 1 else values[1]
    if count is None or count > limits.max_rows_to_read:
        raise NotReadOnly(f"numbers() may produce at most GOALSTREAM_SQL_MAX_ROWS_TO_READ = {limits.max_rows_to_read} rows")


# -- running ----------------------------------------------------------------------------


def settings_clause(scope: Scope, catalog: Catalog, limits: Limits) -> str:
    parts = [
        f"max_execution_time = {limits.max_execution_s:g}",
        f"max_rows_to_read = {int(limits.max_rows_to_read)}",
        f"max_bytes_to_read = {int(limits.max_bytes_to_read)}",
        f"max_result_rows = {int(limits.max_result_rows)}",
        f"max_result_bytes = {int(limits.max_result_bytes)}",
        "result_overflow_mode = 'throw'",
        "read_overflow_mode = 'throw'",
        "timeout_overflow_mode = 'throw'",
        f"max_memory_usage = {int(limits.max_memory_bytes)}",
    ]
    if not scope.operator:
        # The workspace filter first, then the caller's conditions: no moving them ahead
        # of it into PREWHERE, and `and` evaluates its right side only where the left holds.
        parts += ["optimize_move_to_prewhere = 0", "optimize_move_to_prewhere_if_final = 0",
                  "short_circuit_function_evaluation = 'force_enable'"]
        entries = ", ".join(f"{quote(t)}: {quote(f)}" for t, f in catalog.filters(scope.workspace).items())
        parts.append("additional_table_filters = {" + entries + "}")
    # Last: readonly=1 also forbids changing settings after it (the views set their own,
    # which readonly=2 allows; nothing the caller wrote can set any, see "Set" above).
    parts.append("readonly = 2")
    return " SETTINGS " + ", ".join(parts)


def statement(checked: Checked, scope: Scope, catalog: Catalog, limits: Limits) -> str:
    """The text that runs: the canonical query with our settings appended."""
    clause = settings_clause(scope, catalog, limits)
    if checked.kind == "union":
        # SETTINGS after a UNION attach to its last part; wrapped, they cover the whole.
        return f"SELECT * FROM ({checked.canonical}){clause}"
    if checked.kind == "explain":
        inner = checked.canonical[len(checked.prefix) + 1 :]
        if checked.inner_kind == "union":
            inner = f"SELECT * FROM ({inner})"
        return f"{checked.prefix} {inner}{clause}"
    if checked.kind == "show":
        return f"SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name{clause}"
    return checked.canonical + clause


def limit_message(exc: Exception, limits: Limits) -> str | None:
    key = LIMIT_CODES.get(_code(exc) or -1)
    if key is None:
        return None
    return f"the query exceeded {limits.env_name(key)} = {limits.value(key)} ({_engine_error(exc)})"


def run(client: Any, sql: str, fmt: str, scope: Scope, limits: Limits, catalog: Catalog | None = None) -> bytes:
    """Check and run one query; returns the result in ClickHouse output format ``fmt``."""
    if not FORMATS.match(fmt or ""):
        raise NotReadOnly("bad format name")
    catalog = catalog or Catalog.load(client)
    if fmt not in catalog.formats:
        raise NotReadOnly(f"unknown output format {fmt!r}")
    checked = check(client, sql, scope, catalog, limits)
    text = statement(checked, scope, catalog, limits)
    try:
        return client.raw_query(text, fmt=fmt)
    except Exception as exc:
        if (msg := limit_message(exc, limits)) is not None:
            raise LimitReached(msg) from None
        if _code(exc) is not None:
            raise QueryFailed(_engine_error(exc)) from None
        raise
