"""What PromQL expressions and Prometheus ``/metrics`` pages name: a small tokenizer, no PromQL engine.

``references(expr)`` finds the metric names an expression selects (identifiers outside ``{...}``,
``[...]``, strings and comments that are neither called as a function nor a keyword, plus
``{__name__="..."}``) and the functions it calls; ``served_names(text)`` the sample names a scrape
may hold, including those of families that have no sample yet (a counter's ``_total``, a histogram's
``_bucket``/``_sum``/``_count``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

KEYWORDS = frozenset({"and", "or", "unless", "offset", "bool", "inf", "nan", "group_left", "group_right"})
CLAUSES = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
FUNCTIONS = frozenset(
    """abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month day_of_week day_of_year
    days_in_month delta deriv exp floor histogram_avg histogram_count histogram_fraction histogram_quantile
    histogram_stddev histogram_stdvar histogram_sum holt_winters double_exponential_smoothing hour idelta
    increase irate label_join label_replace ln log2 log10 minute month predict_linear rate resets round
    scalar sgn sort sort_desc sort_by_label sort_by_label_desc sqrt time timestamp vector year
    avg_over_time min_over_time max_over_time sum_over_time count_over_time quantile_over_time
    stddev_over_time stdvar_over_time last_over_time present_over_time mad_over_time
    acos acosh asin asinh atan atanh cos cosh sin sinh tan tanh deg rad pi
    sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio
    start end""".split()
)

_TOKEN = re.compile(
    r"""(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
      |(?P<comment>\#[^\n]*)
      |(?P<var>\$\{[^}]*\}|\$\w+)
      |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
      |(?P<number>\d[\w.]*|\.\d[\w.]*)
      |(?P<space>\s+)
      |(?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)


@dataclass
class References:
    metrics: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)


def _tokens(expr: str) -> list[tuple[str, str]]:
    found = []
    for match in _TOKEN.finditer(expr):
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("space", "comment"):
            found.append((kind, match.group()))
    return found


def _unquote(literal: str) -> str:
    return literal[1:-1]


def references(expr: str) -> References:
    """The metric names ``expr`` selects and the functions it calls."""
    tokens = _tokens(expr)
    refs = References()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if text == "{":  # label matchers: only __name__="x" names a metric
            i += 1
            while i < len(tokens) and tokens[i][1] != "}":
                if tokens[i][1] == "__name__" and i + 2 < len(tokens) and tokens[i + 1][1] == "=":
                    if tokens[i + 2][0] == "string":
                        refs.metrics.add(_unquote(tokens[i + 2][1]))
                i += 1
        elif text == "[":  # range or subquery: durations and variables only
            while i < len(tokens) and tokens[i][1] != "]":
                i += 1
        elif kind == "ident" and text.lower() in CLAUSES and following == "(":
            while i < len(tokens) and tokens[i][1] != ")":  # label names up to the clause's ")"
                i += 1
        elif kind == "ident" and (following == "(" or (text in FUNCTIONS and following.lower() in ("by", "without"))):
            refs.functions.add(text)  # a call, or an aggregation written `sum by (x) (...)`
        elif kind == "ident" and text.lower() not in KEYWORDS and text.lower() not in CLAUSES:
            refs.metrics.add(text)
        i += 1
    return refs


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def served_names(exposition: str) -> set[str]:
    """Every sample name a scrape of ``exposition`` may hold, families without samples included."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names
