"""Grading one scenario's transcript (pure): passed or failed, and why in plain words,
e.g. "called get_weather with city='paris, fr' but expected Paris"."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from manager.chat.calculator import CalculatorError, evaluate
from manager.chat.toolcheck.results import CallRecord, Status, Transcript, Verdict
from manager.chat.toolcheck.scenarios import ArgRule, CallRule, Scenario

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_JSON_TYPES = {"string": str, "boolean": bool, "object": dict, "array": list}


def _squeeze(text: str) -> str:
    return " ".join(text.split()).casefold()


def _quote(value: Any) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value)


def parse_arguments(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """(arguments, None) or (None, what is wrong). A JSON string holding a JSON object
    (double-encoded, as some servers send) counts as that object."""
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return None, f"were not valid JSON: {text[:80]}"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None, f"were not valid JSON: {value[:80]}"
    if not isinstance(value, dict):
        return None, f"were not a JSON object but {type(value).__name__}"
    return value, None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    return None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def _arg_problem(rule: ArgRule, args: Mapping[str, Any]) -> str | None:
    """Why the argument breaks the rule (a phrase for "... but expected ..."), or None."""
    if rule.name not in args:
        return f"a '{rule.name}' argument"
    value = args[rule.name]
    if rule.equals is not None:
        if isinstance(rule.equals, str):
            if not isinstance(value, str) or _squeeze(value) != _squeeze(rule.equals):
                return f"{rule.equals}"
        else:
            number = _number(value)
            if number is None or not _close(number, rule.equals):
                return f"{rule.equals:g}"
    if rule.contains is not None and (not isinstance(value, str)
                                      or _squeeze(rule.contains) not in _squeeze(value)):
        return f"{rule.name} to contain {rule.contains!r}"
    if rule.evaluates_to is not None:
        if not isinstance(value, str):
            return f"an expression worth {rule.evaluates_to:g}"
        try:
            got = evaluate(value).value
        except CalculatorError:
            return f"an expression worth {rule.evaluates_to:g}"
        if not _close(float(got), rule.evaluates_to):
            return f"an expression worth {rule.evaluates_to:g}"
    return None


def _call_text(call: CallRecord, args: Mapping[str, Any]) -> str:
    shown = ", ".join(f"{k}={_quote(v)}" for k, v in args.items())
    return f"called {call.name} with {shown}" if shown else f"called {call.name}"


def _schema_problem(call: CallRecord, args: Mapping[str, Any],
                    schema: Mapping[str, Any]) -> str | None:
    properties = schema.get("properties") or {}
    for name in schema.get("required") or []:
        if name not in args:
            return f"called {call.name} without the required argument '{name}'"
    for name, value in args.items():
        spec = properties.get(name)
        if not isinstance(spec, Mapping):
            continue
        kind = spec.get("type")
        ok = True
        if kind in ("number", "integer"):
            ok = _number(value) is not None and (kind == "number" or float(value).is_integer())
        elif isinstance(kind, str) and kind in _JSON_TYPES:
            ok = isinstance(value, _JSON_TYPES[kind])
        if not ok:
            return (f"argument '{name}' of {call.name} was {_quote(value)}, but the schema "
                    f"asks for a {kind}")
        choices = spec.get("enum")
        if isinstance(choices, list) and value not in choices:
            return (f"argument '{name}' of {call.name} was {_quote(value)}, not one of "
                    f"{', '.join(map(str, choices))}")
    return None


def _matches(rule: CallRule, call: CallRecord, args: Mapping[str, Any]) -> str | None:
    """None when the call fits the rule, else the phrase after "but expected"."""
    if call.name != rule.tool:
        return rule.tool
    for arg in rule.args:
        problem = _arg_problem(arg, args)
        if problem is not None:
            return problem
    return None


def _expected_calls(scenario: Scenario, calls: Sequence[tuple[CallRecord, dict[str, Any]]]
                    ) -> str | None:
    used: set[int] = set()
    last_round = 0
    for rule in scenario.calls:
        candidates = [(i, c, a) for i, (c, a) in enumerate(calls) if i not in used]
        found = next(((i, c) for i, c, a in candidates if _matches(rule, c, a) is None), None)
        if found is None:
            if not calls:
                return f"answered without calling {rule.tool}"
            same_tool = [(c, a) for _, c, a in candidates if c.name == rule.tool]
            if same_tool:
                call, args = same_tool[0]
                return f"{_call_text(call, args)} but expected {_matches(rule, call, args)}"
            if not candidates:
                return f"did not call {rule.tool} again"
            names = ", ".join(dict.fromkeys(c.name for _, c, _ in candidates))
            return f"called {names} but expected {rule.tool}"
        index, call = found
        if scenario.in_order and call.round <= last_round:
            return (f"called {call.name} in the same round as the call before it, without "
                    "waiting for that call's result")
        used.add(index)
        last_round = call.round
    return None


def _figures(text: str) -> set[str]:
    return {m.group(0).lstrip("-") for m in _NUMBER.finditer(text)}


def _answer_problem(scenario: Scenario, transcript: Transcript) -> str | None:
    answer = transcript.answer.strip()
    if not answer:
        return ("gave no final answer after the tool results" if transcript.calls
                else "gave no answer")
    for word in scenario.answer_includes:
        if _squeeze(word) not in _squeeze(answer):
            return f"the answer does not mention {word}"
    if scenario.answer_uses_result:
        returned: set[str] = set()
        for call in transcript.calls:
            if call.status == "ok":
                returned |= _figures(call.result)
        returned -= _figures(transcript.prompt)
        if returned and not returned & _figures(answer):
            shown = ", ".join(sorted(returned)[:3])
            return f"the answer does not use the tool's result (it returned {shown})"
    return None


def _passed_reason(scenario: Scenario,
                   calls: Sequence[tuple[CallRecord, dict[str, Any]]]) -> str:
    if not calls:
        return "answered without a tool, as it should"
    made = "; ".join(_call_text(c, a) for c, a in calls)
    return f"{made}; then answered"


def grade(scenario: Scenario, transcript: Transcript,
          tools: Mapping[str, Mapping[str, Any]]) -> Verdict:
    """The verdict on one transcript; `tools` maps each tool the model had to its JSON
    schema. The first problem found is the reason."""
    def failed(reason: str) -> Verdict:
        return Verdict(Status.FAILED, reason)

    if transcript.timed_out:
        return failed(transcript.error or "took too long")
    names = ", ".join(tools) or "none"
    parsed: list[tuple[CallRecord, dict[str, Any]]] = []
    for call in transcript.calls:
        if call.name not in tools:
            return failed(f"called {call.name or 'a tool with no name'}, which is not one of "
                          f"its tools ({names})")
        args, problem = parse_arguments(call.arguments)
        if args is None:
            return failed(f"arguments for {call.name} {problem}")
        schema_problem = _schema_problem(call, args, tools[call.name])
        if schema_problem is not None:
            return failed(schema_problem)
        parsed.append((call, args))
    if transcript.round_cap:
        asked = ", ".join(dict.fromkeys(c.name for c in transcript.calls)) or "tools"
        rounds = transcript.rounds - 1
        return failed(f"kept calling {asked} in a loop: still asking after {rounds} "
                      f"round{'' if rounds == 1 else 's'}")
    if transcript.error:
        return failed(transcript.error)
    if scenario.no_calls and parsed:
        return failed(f"{_call_text(*parsed[0])}, but this question needs no tool")
    problem = _expected_calls(scenario, parsed)
    if problem is not None:
        return failed(problem)
    if scenario.tool_error and not any(c.status == "tool_error" for c, _ in parsed):
        made = "; ".join(_call_text(c, a) for c, a in parsed)
        return failed(f"none of its calls made the tool report an error ({made})")
    if scenario.max_calls is not None and len(parsed) > scenario.max_calls:
        enough = scenario.max_calls
        return failed(f"made {len(parsed)} tool calls where {enough} "
                      f"{'was' if enough == 1 else 'were'} enough")
    problem = _answer_problem(scenario, transcript)
    if problem is not None:
        return failed(problem)
    return Verdict(Status.PASSED, _passed_reason(scenario, parsed))
