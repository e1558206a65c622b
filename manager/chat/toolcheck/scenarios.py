"""Tool-use scenarios as data: the question, the calls a good model makes (with rules for
their arguments) and what its answer must say. The built-in suite is below; an admin can
add more as JSON (stored in SQLite, see store.py), checked here field by field."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from manager.errors import ValidationError

MAX_NAME = 64
MAX_PROMPT = 4000
MAX_CALLS = 20
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class ArgRule:
    """What one argument of an expected call must be. Text compares ignoring case and
    extra spaces; `evaluates_to` reads the argument as arithmetic (calculator input)."""

    name: str
    equals: str | float | None = None
    contains: str | None = None
    evaluates_to: float | None = None


@dataclass(frozen=True)
class CallRule:
    tool: str
    args: tuple[ArgRule, ...] = ()


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    category: str
    prompt: str
    #: Calls a good model makes (in any order and rounds unless `in_order`).
    calls: tuple[CallRule, ...] = ()
    #: The question needs no tool: any call fails the scenario.
    no_calls: bool = False
    #: Each expected call comes in a later round than the one before (a chain).
    in_order: bool = False
    #: More calls than this fail (it should stop once it has the answer).
    max_calls: int | None = None
    #: Words or figures the final answer must contain (ignoring case).
    answer_includes: tuple[str, ...] = ()
    #: The final answer must mention a figure a tool returned.
    answer_uses_result: bool = False
    #: The question makes a tool fail: a call must report an error and the model still
    #: answer (gracefully, without retrying past `max_calls`).
    tool_error: bool = False
    builtin: bool = field(default=True, compare=False)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("builtin")
        return json.dumps(data, indent=2)


def _weather(city: str, **more: str) -> CallRule:
    return CallRule("get_weather", (ArgRule("city", equals=city),
                                    *(ArgRule(k, equals=v) for k, v in more.items())))


def _calc(value: float, contains: str | None = None) -> CallRule:
    return CallRule("calculator", (ArgRule("expression", evaluates_to=value,
                                           contains=contains),))


BUILTIN_SCENARIOS: tuple[Scenario, ...] = (
    Scenario("weather_city", "One weather call with the right city", "weather",
             "What is the weather in Paris right now?", calls=(_weather("Paris"),),
             max_calls=1, answer_uses_result=True),
    Scenario("calculator_precedence", "Arithmetic with operator precedence", "arithmetic",
             "Use the calculator: what is 2 + 3 * 4?", calls=(_calc(14),), max_calls=1,
             answer_includes=("14",)),
    Scenario("two_cities", "Two cities need two calls", "multiple calls",
             "Compare the weather in Paris and in Berlin.",
             calls=(_weather("Paris"), _weather("Berlin")), max_calls=2),
    Scenario("no_tool_needed", "A question that needs no tool", "restraint",
             "Say hello in French.", no_calls=True),
    Scenario("missing_tool", "A tool it does not have", "restraint",
             "Send an email to bob@example.com saying hi.", no_calls=True),
    Scenario("schema_enum", "Argument values from the schema", "arguments",
             "What is the weather in Tokyo, in fahrenheit?",
             calls=(_weather("Tokyo", unit="fahrenheit"),), max_calls=1),
    Scenario("valid_json", "Arguments as valid JSON", "arguments",
             "Use the calculator to work out (17 - 5) / 4.", calls=(_calc(3),),
             max_calls=1, answer_includes=("3",)),
    Scenario("uses_result", "The answer uses the tool's result", "answers",
             "How warm is it in Madrid? Give the temperature.",
             calls=(_weather("Madrid"),), max_calls=1, answer_uses_result=True),
    Scenario("chain", "A two-step chain", "chains",
             "Use the calculator to compute 6 * 7, then use it again to add 8 to that result.",
             calls=(_calc(42), _calc(50, contains="42")), in_order=True, max_calls=2,
             answer_includes=("50",)),
    Scenario("stops_after_answer", "Stops after the answer", "chains",
             "What is 12 * 12? Use the calculator once.", calls=(_calc(144),), max_calls=1,
             answer_includes=("144",)),
    Scenario("tool_error", "A tool error handled gracefully", "robustness",
             "Use the calculator to divide 1 by 0.",
             calls=(CallRule("calculator"),), max_calls=2, tool_error=True),
    Scenario("weather_and_math", "Two different tools for one question", "multiple calls",
             "What is the weather in Oslo, and what is 15% of 80?",
             calls=(_weather("Oslo"), _calc(12)), max_calls=2),
)


# --- admin scenarios from JSON -------------------------------------------------------------


def _text(data: Mapping[str, Any], key: str, *, limit: int, required: bool = True) -> str:
    value = data.get(key, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise ValidationError(f"'{key}' must be {'a non-empty' if required else 'a'} text.",
                              key)
    if len(value) > limit:
        raise ValidationError(f"'{key}' is at most {limit} characters.", key)
    return value.strip()


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise ValidationError(f"{where} must be a number.", "definition")
    return float(value)


def _arg_rule(data: Any, where: str) -> ArgRule:
    if not isinstance(data, Mapping) or not isinstance(data.get("name"), str) \
            or not data["name"].strip():
        raise ValidationError(f"{where} needs a 'name' (the argument's name).", "definition")
    equals = data.get("equals")
    if equals is not None and not isinstance(equals, str):
        equals = _number(equals, f"{where} 'equals'")
    contains = data.get("contains")
    if contains is not None and not isinstance(contains, str):
        raise ValidationError(f"{where} 'contains' must be a text.", "definition")
    return ArgRule(data["name"].strip(), equals, contains,
                   _number(data.get("evaluates_to"), f"{where} 'evaluates_to'"))


def _call_rule(data: Any, where: str) -> CallRule:
    if not isinstance(data, Mapping) or not isinstance(data.get("tool"), str) \
            or not data["tool"].strip():
        raise ValidationError(f"{where} needs a 'tool' (the tool's name).", "definition")
    args = data.get("args") or []
    if not isinstance(args, list):
        raise ValidationError(f"{where} 'args' must be a list.", "definition")
    return CallRule(data["tool"].strip(),
                    tuple(_arg_rule(a, f"{where} argument {i + 1}") for i, a in enumerate(args)))


def scenario_from_json(text: str) -> Scenario:
    """An admin's scenario, checked field by field (ValidationError says what to fix)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"The scenario is not valid JSON ({exc.msg}, line {exc.lineno}).",
                              "definition") from exc
    if not isinstance(data, dict):
        raise ValidationError("The scenario must be a JSON object.", "definition")
    name = _text(data, "name", limit=MAX_NAME).lower()
    if not _NAME.match(name):
        raise ValidationError("'name' may use lower-case letters, digits, _ and - only.", "name")
    calls = data.get("calls") or []
    if not isinstance(calls, list) or len(calls) > MAX_CALLS:
        raise ValidationError(f"'calls' must be a list of at most {MAX_CALLS} calls.", "calls")
    includes = data.get("answer_includes") or []
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ValidationError("'answer_includes' must be a list of texts.", "answer_includes")
    max_calls = data.get("max_calls")
    if max_calls is not None and (isinstance(max_calls, bool) or not isinstance(max_calls, int)
                                  or max_calls < 0):
        raise ValidationError("'max_calls' must be a whole number of 0 or more.", "max_calls")
    scenario = Scenario(
        name=name, title=_text(data, "title", limit=200, required=False) or name,
        category=_text(data, "category", limit=40, required=False) or "custom",
        prompt=_text(data, "prompt", limit=MAX_PROMPT),
        calls=tuple(_call_rule(c, f"Call {i + 1}") for i, c in enumerate(calls)),
        no_calls=bool(data.get("no_calls", False)), in_order=bool(data.get("in_order", False)),
        max_calls=max_calls, answer_includes=tuple(i for i in includes if i.strip()),
        answer_uses_result=bool(data.get("answer_uses_result", False)),
        tool_error=bool(data.get("tool_error", False)), builtin=False)
    if scenario.no_calls and scenario.calls:
        raise ValidationError("A scenario cannot both expect calls and forbid them "
                              "('no_calls').", "no_calls")
    return scenario
