"""Table tests for the safe calculator: what it computes, how it formats, what it refuses."""

from __future__ import annotations

import pytest

from manager.chat.calculator import (
    MAX_DIGITS,
    MAX_LENGTH,
    CalculatorError,
    evaluate,
    format_number,
)
from manager.errors import ManagerError, ValidationError

ALLOWED = [
    ("(1+2)*3", 9, "9"),
    ("7//2", 3, "3"),
    ("7%3", 1, "1"),
    ("-7//2", -4, "-4"),
    ("2**-1", 0.5, "0.5"),
    ("-(3)", -3, "-3"),
    ("+4", 4, "4"),
    ("--5", 5, "5"),
    ("-2**2", -4, "-4"),  # power binds tighter than unary minus, as in Python
    ("2**3**2", 512, "512"),  # right-associative
    ("1e3", 1000.0, "1000"),  # scientific notation is allowed (documented)
    ("1.5e-3 * 2", 0.003, "0.003"),
    ("0.1 + 0.2", 0.30000000000000004, "0.3"),  # 12 significant digits
    ("1/3", 1 / 3, "0.333333333333"),
    ("10/4", 2.5, "2.5"),
    ("7/7", 1.0, "1"),  # an integral decimal shows without ".0"
    ("1e20 * 1e20", 1e40, "1e40"),
    ("1 / 50000000", 2e-8, "2e-8"),
    ("2 ** 0.5", 2**0.5, "1.41421356237"),
    ("-0.0", -0.0, "0"),
    (".5 + 5.", 5.5, "5.5"),
    ("1_000 * 3", 3000, "3000"),
    ("  ( 2 * (3 + 4) )  ", 14, "14"),
    ("7.5 % 2", 1.5, "1.5"),
    ("10**299", 10**299, "1" + "0" * 299),  # 300 digits: exactly the limit
    ("(-8) ** 2", 64, "64"),
    ("1 ** 1000000000", 1, "1"),  # a huge exponent is harmless on 1
    ("+".join(["1"] * 100), 100, "100"),  # adding up 100 figures is fine
    ("(" * 120 + "1" + ")" * 120, 1, "1"),  # parentheses alone add no depth
]


@pytest.mark.parametrize(("expression", "value", "text"), ALLOWED,
                         ids=[case[0] for case in ALLOWED])
def test_allowed(expression: str, value: float, text: str) -> None:
    result = evaluate(expression)
    assert result.value == value
    assert type(result.value) is type(value)
    assert result.text == text


REFUSED = [
    ("__import__('os')", "not function calls ('__import__(...)')"),
    ("__import__('os').system('true')", "not function calls"),
    ("os", "not names ('os')"),
    ("abs(-1)", "not function calls ('abs(...)')"),
    ("(1).real", "not attributes"),
    ("[1, 2][0]", "not indexing"),
    ("'a' * 3", "not text"),
    ("f'{1}'", "not strings"),
    ("[x for x in (1, 2)]", "not comprehensions"),
    ("1 < 2", "not comparisons"),
    ("1 and 2", "not and/or"),
    ("True + 1", "not True/False"),
    ("1j * 2", "not complex numbers"),
    ("lambda: 1", "not lambdas"),
    ("(x := 3)", "not assignments"),
    ("1 if 1 else 2", "not if/else"),
    ("1 & 3", "not bitwise operators"),
    ("1 << 3", "not bitwise operators"),
    ("~1", "not ~ or not"),
    ("0x10", "Only decimal numbers are allowed, not '0x10'"),
    ("1, 2", "not tuples"),
    ("9**9**9", "That exponent is too large (387420489); the limit is 10,000."),
    ("2**100000", "That exponent is too large"),
    ("10**300", f"about 301 digits); the limit is {MAX_DIGITS} digits"),
    ("9" * 200 + "*" + "9" * 150, "That result would be too large to compute"),
    ("1" * 301, f"more than {MAX_DIGITS} digits"),
    ("2.5 ** 2000", "That result is too large to compute."),
    ("1e300 * 1e300", "That result is too large to compute."),
    ("1e400", "That number is too large to work with."),
    ("10**200 / 10**-200", "That result is too large to compute."),
    ("(-8) ** (1/3)", "no real result"),
    ("1/0", "Division by zero is not defined."),
    ("5 // 0", "Division by zero is not defined."),
    ("5 % 0.0", "Division by zero is not defined."),
    ("0 ** -1", "Division by zero is not defined (0 to a negative power)."),
    ("", "Please give an expression to calculate"),
    ("   ", "Please give an expression to calculate"),
    ("1 +", "I could not read that expression"),
    ("(1 + 2", "I could not read that expression"),
    ("1 + 2\x00", "I could not read that expression"),
    ("import os", "I could not read that expression"),
    ("1" + "+1" * 249 + "+", "I could not read that expression"),  # 500 characters: read
    ("1" + "+1" * 300, f"too long (601 characters); the limit is {MAX_LENGTH} characters"),
    ("-" * 100 + "1", "nested too deeply (more than 100 levels)"),
    ("(" * 210 + "1" + ")" * 210, "nested too deeply"),  # Python's parser refuses first
    ("+".join(["1"] * 101), "nested too deeply (more than 100 levels)"),
    ("+".join(["(1+1)"] * 70), "too complex (more than 250 parts)"),
]


@pytest.mark.parametrize(("expression", "message"), REFUSED,
                         ids=[case[0][:30] for case in REFUSED])
def test_refused_politely(expression: str, message: str) -> None:
    with pytest.raises(CalculatorError) as caught:
        evaluate(expression)
    assert message in caught.value.message
    # A ManagerError carrying the form field, so the UI can show it as is.
    assert isinstance(caught.value, ValidationError) and isinstance(caught.value, ManagerError)
    assert caught.value.field == "expression"


def test_nine_to_the_nine_to_the_nine_is_refused_before_any_big_work() -> None:
    # If the limit were checked after computing, this would not return for minutes.
    with pytest.raises(CalculatorError, match="too large"):
        evaluate("9**9**9**9")
    with pytest.raises(CalculatorError, match="too large"):
        evaluate("(10**299) ** 2")


@pytest.mark.parametrize(("value", "text"), [
    (0, "0"), (-12, "-12"), (2.0, "2"), (1234567.891, "1234567.891"),
    (123456789012345.0, "1.23456789012e14"), (1e-7, "1e-7"), (-2.5, "-2.5"),
    (0.1 + 0.2, "0.3"),
])
def test_format_number(value: float, text: str) -> None:
    assert format_number(value) == text
