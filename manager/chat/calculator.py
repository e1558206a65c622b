"""A safe arithmetic evaluator: Python's own parser, then a walk that allows only numbers.

Allowed: + - * / // % ** and parentheses, unary minus and plus, integers and
decimals. Scientific notation (1e3, 2.5e-4) is allowed: it is how models and people
write very large and very small decimals, and it is still just a number. Anything
else (names, calls, attributes, subscripts, strings, comparisons, comprehensions,
complex numbers, True/False) is refused with a message a person can act on.

Sizes are checked BEFORE computing: the length of the text, the size and depth of the
expression tree, the exponent of a power and the digit count an integer result would
have, so `9**9**9` is refused at once rather than after minutes of work.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass

from manager.errors import ValidationError

MAX_LENGTH = 500
MAX_NODES = 250
# A sum of n numbers is a chain n deep, so this allows adding up ~100 figures.
MAX_DEPTH = 100
MAX_DIGITS = 300  # integers up to about the range of a float (1e308)
MAX_EXPONENT = 10_000
SIGNIFICANT_DIGITS = 12

_ALLOWED = "numbers, + - * / // % ** and parentheses"
# Decimal literals only (12, 3.5, .5, 1_000, 1e3): Python would also accept 0x10 or 0b1.
_DECIMAL = re.compile(r"(?=\.?\d)[\d_]*(?:\.[\d_]*)?(?:[eE][+-]?\d[\d_]*)?")
_LOG10_2 = math.log10(2)

_OPERATORS: dict[type[ast.operator], str] = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
    ast.Mod: "%", ast.Pow: "**",
}

# What a refused node is, in words, so the message says what was not allowed.
_REFUSED: dict[type[ast.AST], str] = {
    ast.Name: "names", ast.Call: "function calls", ast.Attribute: "attributes",
    ast.Subscript: "indexing", ast.Compare: "comparisons", ast.BoolOp: "and/or",
    ast.Lambda: "lambdas", ast.IfExp: "if/else", ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions", ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions", ast.List: "lists", ast.Tuple: "tuples",
    ast.Set: "sets", ast.Dict: "dictionaries", ast.JoinedStr: "strings",
    ast.NamedExpr: "assignments", ast.Starred: "unpacking", ast.Await: "await",
    ast.Slice: "slices",
}


class CalculatorError(ValidationError):
    """An expression the calculator will not or cannot evaluate; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="expression")


@dataclass(frozen=True)
class Calculation:
    expression: str
    value: int | float
    text: str  # the value formatted for people and models


def evaluate(expression: str) -> Calculation:
    """Evaluate an arithmetic expression, or raise CalculatorError with a polite reason."""
    source = expression.strip()
    if not source:
        raise CalculatorError("Please give an expression to calculate, for example (1 + 2) * 3.")
    if len(source) > MAX_LENGTH:
        raise CalculatorError(
            f"That expression is too long ({len(source):,} characters); "
            f"the limit is {MAX_LENGTH} characters."
        )
    tree = _parse(source)
    _check_shape(tree, source)
    value = _eval(tree.body)
    return Calculation(expression=source, value=value, text=format_number(value))


def format_number(value: int | float) -> str:
    """Integers in full; decimals to 12 significant digits, without trailing zeros."""
    if isinstance(value, int):
        return str(value)
    if value == 0:
        return "0"  # also turns -0.0 into 0
    text = format(value, f".{SIGNIFICANT_DIGITS}g")
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{mantissa}e{int(exponent)}"
    return text


def _parse(source: str) -> ast.Expression:
    try:
        return ast.parse(source, mode="eval")
    except SyntaxError as exc:
        if "nested" in str(exc):
            raise CalculatorError("That expression is nested too deeply.") from exc
        raise CalculatorError(
            "I could not read that expression: check the numbers, operators and brackets."
        ) from exc
    except (ValueError, RecursionError, MemoryError) as exc:
        # Null bytes (ValueError) or pathological nesting (RecursionError/MemoryError).
        raise CalculatorError("I could not read that expression.") from exc


def _check_shape(tree: ast.Expression, source: str) -> None:
    """Refuse unknown nodes, and trees too big or too deep, before evaluating anything."""
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise CalculatorError(
                f"That expression is too complex (more than {MAX_NODES} parts)."
            )
        if depth > MAX_DEPTH:
            raise CalculatorError(
                f"That expression is nested too deeply (more than {MAX_DEPTH} levels)."
            )
        _check_node(node, source)
        stack.extend((child, depth + 1) for child in _operands(node))


def _operands(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.BinOp):
        return [node.left, node.right]
    if isinstance(node, ast.UnaryOp):
        return [node.operand]
    return []


def _check_node(node: ast.AST, source: str) -> None:
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _OPERATORS:
            raise CalculatorError(f"Only {_ALLOWED} are allowed, not bitwise operators.")
        return
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, (ast.USub, ast.UAdd)):
            raise CalculatorError("Only a leading - or + may stand before a number, not ~ or not.")
        return
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = "complex numbers" if isinstance(value, complex) else (
                "True/False" if isinstance(value, bool) else "text")
            raise CalculatorError(f"Only {_ALLOWED} are allowed, not {kind}.")
        literal = ast.get_source_segment(source, node) or ""
        if not _DECIMAL.fullmatch(literal):
            raise CalculatorError(
                f"Only decimal numbers are allowed, not '{literal[:20]}'."
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise CalculatorError("That number is too large to work with.")
        if isinstance(value, int) and _digits(value) > MAX_DIGITS:
            raise CalculatorError(
                f"That number has more than {MAX_DIGITS} digits, which is the limit."
            )
        return
    what = _REFUSED.get(type(node), "that kind of expression")
    detail = ""
    if isinstance(node, ast.Name):
        detail = f" ('{node.id}')"
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        detail = f" ('{node.func.id}(...)')"
    raise CalculatorError(f"Only {_ALLOWED} are allowed, not {what}{detail}.")


def _digits(value: int) -> int:
    """Decimal digits of an integer, from its bit length (no conversion to text)."""
    bits = abs(value).bit_length()
    return max(1, math.ceil(bits * _LOG10_2))


def _too_big(digits: float) -> CalculatorError:
    return CalculatorError(
        f"That result would be too large to compute (about {math.ceil(digits):,} digits); "
        f"the limit is {MAX_DIGITS} digits."
    )


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand)
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        return _checked(_binary(type(node.op), left, right))
    # _check_shape refused everything else; this keeps the walk total.
    raise CalculatorError("That expression cannot be evaluated.")


def _binary(op: type[ast.operator], left: int | float, right: int | float) -> int | float:
    try:
        if op is ast.Add:
            return left + right
        if op is ast.Sub:
            return left - right
        if op is ast.Mult:
            if isinstance(left, int) and isinstance(right, int) and left and right:
                digits = _digits(left) + _digits(right) - 1
                if digits > MAX_DIGITS:
                    raise _too_big(digits)
            return left * right
        if op is ast.Div:
            return left / right
        if op is ast.FloorDiv:
            return left // right
        if op is ast.Mod:
            return left % right
        return _power(left, right)
    except ZeroDivisionError as exc:
        raise CalculatorError("Division by zero is not defined.") from exc
    except OverflowError as exc:
        raise CalculatorError("That result is too large to compute.") from exc


def _power(base: int | float, exponent: int | float) -> int | float:
    if abs(exponent) > MAX_EXPONENT and abs(base) != 1 and base != 0:
        raise CalculatorError(
            f"That exponent is too large ({format_number(exponent)}); "
            f"the limit is {MAX_EXPONENT:,}."
        )
    if base < 0 and isinstance(exponent, float) and not exponent.is_integer():
        raise CalculatorError(
            "A negative number raised to a fractional power has no real result."
        )
    if isinstance(base, int) and isinstance(exponent, int):
        if exponent < 0:
            if base == 0:
                raise CalculatorError("Division by zero is not defined (0 to a negative power).")
            return float(base) ** exponent
        if abs(base) > 1:
            digits = exponent * math.log10(abs(base))
            if digits > MAX_DIGITS:
                raise _too_big(digits)
        return base**exponent
    if base == 0 and exponent < 0:
        raise CalculatorError("Division by zero is not defined (0 to a negative power).")
    return float(base) ** float(exponent)


def _checked(value: int | float) -> int | float:
    if isinstance(value, complex):
        raise CalculatorError("That calculation has no real result.")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("That result is too large to compute.")
    if isinstance(value, int) and _digits(value) > MAX_DIGITS:
        raise _too_big(_digits(value))
    return value
