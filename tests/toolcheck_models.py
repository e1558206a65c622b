"""Scripted tiny models with known tool-use behaviour, for the tool-use check's tests:
one that uses the tools as the built-in scenarios ask, one that never calls a tool, one
that calls the wrong tool, one with malformed arguments and one that loops."""

from __future__ import annotations

from pathlib import Path

from manager.chat.mcp_builtin import sample_weather
from tests.fixtures.routed_model import call_block, make_routed_model


def _celsius(city: str) -> str:
    return f"{sample_weather(city).temperature:.1f}"


def _calc(expression: str) -> str:
    return call_block("calculator", {"expression": expression})


def _weather(city: str, **more: str) -> str:
    return call_block("get_weather", {"city": city, **more})


def correct_routes() -> list[tuple[str, list[str]]]:
    """A reply per round for each built-in scenario (matched by a piece of its prompt)."""
    tokyo = f"{sample_weather('Tokyo', 'fahrenheit').temperature:.1f}"
    return [
        ("in Paris right now", [_weather("Paris"), f"It is {_celsius('Paris')} C in Paris."]),
        ("2 + 3 * 4", [_calc("2 + 3 * 4"), "2 + 3 * 4 = 14."]),
        ("Paris and in Berlin", [_weather("Paris") + _weather("Berlin"),
                                 f"Paris: {_celsius('Paris')} C, Berlin: "
                                 f"{_celsius('Berlin')} C."]),
        ("hello in French", ["Bonjour !"]),
        ("Send an email", ["I cannot send emails: I have no tool for that."]),
        ("Tokyo, in fahrenheit", [_weather("Tokyo", unit="fahrenheit"),
                                  f"It is {tokyo} F in Tokyo."]),
        ("(17 - 5) / 4", [_calc("(17 - 5) / 4"), "(17 - 5) / 4 = 3."]),
        ("warm is it in Madrid", [_weather("Madrid"), f"It is {_celsius('Madrid')} C."]),
        ("compute 6 * 7", [_calc("6 * 7"), _calc("42 + 8"), "6 * 7 = 42; 42 + 8 = 50."]),
        ("12 * 12", [_calc("12 * 12"), "12 * 12 = 144."]),
        ("divide 1 by 0", [_calc("1 / 0"), "That cannot be done: dividing by zero is "
                                          "not defined."]),
        ("Oslo, and what is 15%", [_weather("Oslo") + _calc("15 / 100 * 80"),
                                   f"Oslo: {_celsius('Oslo')} C. 15% of 80 is 12."]),
    ]


def make_check_models(root: Path) -> dict[str, Path]:
    """name -> model dir: correct, silent, wrong_tool, malformed, looping."""
    always = ""  # every user message contains the empty string
    builders = {
        "correct": lambda d: make_routed_model(d, correct_routes(), "I am not sure."),
        "silent": lambda d: make_routed_model(d, [], "I think it is fine."),
        "wrong_tool": lambda d: make_routed_model(
            d, [(always, [_calc("1 + 1"), "The answer is 2."])], "The answer is 2."),
        "malformed": lambda d: make_routed_model(
            d, [(always, [call_block("get_weather", "city=Paris"), "Done."])], "Done."),
        "looping": lambda d: make_routed_model(d, [], _weather("Paris")),
    }
    out = {}
    for name, build in builders.items():
        dest = root / name
        if not (dest / "config.json").exists():
            build(dest)
        out[name] = dest
    return out
