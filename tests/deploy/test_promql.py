"""The name extractor of tests/deploy/promql.py on hostile PromQL: what it must find, and what it must not."""

from __future__ import annotations

import pytest

from tests.deploy.promql import references, served_names


@pytest.mark.parametrize(
    ("expr", "metrics", "functions"),
    [
        ("up", {"up"}, set()),
        (
            'sum by (le, job) (rate(a_bucket{job="x", le!="+Inf"}[$__rate_interval]))',
            {"a_bucket"},
            {"sum", "rate"},
        ),
        (
            "sum(rate(b_total[5m])) by (instance) / ignoring(instance) group_left sum(c)",
            {"b_total", "c"},
            {"sum", "rate"},
        ),
        (
            "histogram_quantile(0.95, sum without (pod) (increase(d_bucket[1h:5m] offset 1h30m)))",
            {"d_bucket"},
            {"histogram_quantile", "sum", "increase"},
        ),
        # strings, comments and label values that look like metrics or braces
        ('label_replace(e, "dst", "rate(fake_one[5m])", "src", "{fake_two}")', {"e"}, {"label_replace"}),
        ('f{path="/a}b{", q=~"g|h"} # and not_a_metric_in_a_comment\n or i', {"f", "i"}, set()),
        ("j > bool 0 and on(le) k unless Inf < NaN", {"j", "k"}, set()),
        ('{__name__="named_by_matcher", job="x"}', {"named_by_matcher"}, set()),
        ("job:recorded:rate5m @ start()", {"job:recorded:rate5m"}, {"start"}),
        ("topk(5, l) * -1e3 + 0x1F - .5", {"l"}, {"topk"}),
        ("m[${__range}]", {"m"}, set()),
        ("rat(typo_metric[5m])", {"typo_metric"}, {"rat"}),
    ],
)
def test_references(expr: str, metrics: set[str], functions: set[str]) -> None:
    found = references(expr)
    assert found.metrics == metrics
    assert found.functions == functions


def test_served_names_include_the_suffixes_of_families_without_samples() -> None:
    text = (
        "# HELP x_total x\n# TYPE x_total counter\n"
        "# HELP h_seconds h\n# TYPE h_seconds histogram\n"
        "# HELP g g\n# TYPE g gauge\ng 1.0\n"
    )
    names = served_names(text)
    assert {"x_total", "h_seconds_bucket", "h_seconds_sum", "h_seconds_count", "g"} <= names
    assert "x" not in names  # a counter is selected as x_total only
    assert "h_seconds" not in names
