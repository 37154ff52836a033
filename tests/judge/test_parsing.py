import math

import pytest

from varpo.judge import InvalidAnswer, extract_interval, parse_interval, validate_interval


@pytest.mark.parametrize("text,expected", [
    ('{"low": 3, "high": 7.5}', (3.0, 7.5)),
    ('  {"high": 9, "low": 2.25}\n', (2.25, 9.0)),
    ('```json\n{"low": 1, "high": 2}\n```', (1.0, 2.0)),
    ('Sure! Here it is:\n```\n{"low": 4, "high": 6}\n```\nThanks.', (4.0, 6.0)),
    ('I would say {"low": 5, "high": 8} overall.', (5.0, 8.0)),
    ('[2, 3.5]', (2.0, 3.5)),
    ('My interval is [ 1.5 , 4e0 ].', (1.5, 4.0)),
    ('<think>maybe {"low": 0, "high": 10}?</think>{"low": 6, "high": 7}', (6.0, 7.0)),
    ('{"LOW": "3.5", "High": 4}', (3.5, 4.0)),
])
def test_accepted_forms(text, expected):
    assert parse_interval(text, 0.0, 10.0) == expected


@pytest.mark.parametrize("text,reason", [
    ("", "empty"),
    ("It is pretty good.", "no interval"),
    ('{"low": 3, "high":', "no interval"),
    ('{"score": 5}', '"low" and "high"'),
    ('{"low": true, "high": 4}', "number"),
    ('{"low": "abc", "high": 4}', "number"),
    ('{"low": 7, "high": 3}', "must not exceed"),
    ('{"low": -1, "high": 3}', "within [0, 10]"),
    ('{"low": 1, "high": 10.5}', "within [0, 10]"),
    ('{"low": NaN, "high": 3}', "finite"),
    ('{"low": 1, "high": Infinity}', "finite"),
])
def test_rejected_with_reason(text, reason):
    with pytest.raises(InvalidAnswer, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_interval(text, 0.0, 10.0)


def test_bounds_are_inclusive_and_degenerate_interval_allowed():
    assert validate_interval(0.0, 10.0, 0.0, 10.0) == (0.0, 10.0)
    assert validate_interval(4.0, 4.0, 0.0, 10.0) == (4.0, 4.0)
    assert parse_interval('{"low": -5, "high": -1}', -5.0, 5.0) == (-5.0, -1.0)


def test_extract_does_not_validate_bounds():
    a, b = extract_interval('{"low": 20, "high": 30}')
    assert (a, b) == (20.0, 30.0) and not math.isnan(a)
