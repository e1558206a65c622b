"""The built-in MCP server, built with the official `mcp` SDK: get_weather and calculator.

Run it as its own process (the dashboard does, over stdio):

    python -m manager.chat.mcp_builtin                       # stdio (default)
    python -m manager.chat.mcp_builtin --transport streamable-http --port 8931

The weather is SAMPLE DATA: figures derived from a SHA-256 of the city name, so a
city always gets the same weather, on every run and machine, and it says so.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from manager.chat.calculator import CalculatorError, evaluate

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

log = logging.getLogger(__name__)

SERVER_NAME = "builtin"
MAX_CITY_LENGTH = 100
SAMPLE_NOTE = "Sample data for demonstrations, not a real forecast."
CONDITIONS = (
    "sunny", "clear", "partly cloudy", "cloudy", "overcast", "light rain", "rain",
    "showers", "thunderstorms", "fog", "drizzle", "light snow", "windy",
)

WEATHER_DESCRIPTION = (
    "Get the current weather for a city. SAMPLE DATA for demonstrations: the figures "
    "are made up (the same every time for a given city), not a real forecast."
)
CALCULATOR_DESCRIPTION = (
    "Evaluate an arithmetic expression exactly and return the result. Supports numbers "
    "(including decimals and 1e3-style notation), + - * / // % ** and parentheses, "
    "e.g. (1 + 2) * 3 or 2 ** 10 / 7. No variables or functions."
)

Unit = Literal["celsius", "fahrenheit"]


@dataclass(frozen=True)
class SampleWeather:
    city: str
    temperature: float
    unit: Unit
    condition: str
    humidity_percent: int
    wind: int
    wind_unit: str

    def text(self) -> str:
        symbol = "°C" if self.unit == "celsius" else "°F"
        return (
            f"{SAMPLE_NOTE} Weather in {self.city}: {self.temperature:.1f} {symbol}, "
            f"{self.condition}, humidity {self.humidity_percent}%, "
            f"wind {self.wind} {self.wind_unit}."
        )


class WeatherInputError(ValueError):
    """A city name the weather tool cannot use; the message is for the model/user."""


def sample_weather(city: str, unit: Unit = "celsius") -> SampleWeather:
    """Deterministic made-up weather: the same city (any case/spacing) gives the same figures."""
    name = " ".join(city.split())
    if not name:
        raise WeatherInputError("Please name a city, for example Paris.")
    if len(name) > MAX_CITY_LENGTH:
        raise WeatherInputError(f"That city name is too long (over {MAX_CITY_LENGTH} characters).")
    if unit not in ("celsius", "fahrenheit"):
        raise WeatherInputError("The unit must be celsius or fahrenheit.")
    # sha256, not hash(): Python salts str hashes per process, this must be stable.
    digest = hashlib.sha256(name.casefold().encode("utf-8")).digest()
    celsius = -10 + digest[0] % 46 + (digest[1] % 10) / 10
    wind_kmh = digest[4] % 41
    if unit == "celsius":
        temperature, wind, wind_unit = celsius, wind_kmh, "km/h"
    else:
        temperature = celsius * 9 / 5 + 32
        wind, wind_unit = round(wind_kmh / 1.609), "mph"
    return SampleWeather(
        city=name, temperature=round(temperature, 1), unit=unit,
        condition=CONDITIONS[digest[2] % len(CONDITIONS)],
        humidity_percent=20 + digest[3] % 76, wind=wind, wind_unit=wind_unit,
    )


def build_server() -> MCPServer:
    """The MCP server object. Build it only in the process that serves it: the SDK's
    MCPServer configures the root logger when constructed."""
    # Imported here: the dashboard and the tests import this module for its sample data.
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer(
        SERVER_NAME,
        instructions="Built-in tools of the MLX Model Manager: sample weather and a calculator.",
        log_level="WARNING",
    )

    def get_weather(
        city: Annotated[str, Field(description="City name, e.g. Paris or New York.")],
        unit: Annotated[Unit, Field(description="Temperature unit.")] = "celsius",
    ) -> str:
        try:
            return sample_weather(city, unit).text()
        except WeatherInputError as exc:
            raise ToolError(str(exc)) from exc

    def calculator(
        expression: Annotated[str, Field(description="The expression, e.g. (1 + 2) * 3.")],
    ) -> str:
        try:
            return evaluate(expression).text
        except CalculatorError as exc:
            raise ToolError(exc.message) from exc

    server.add_tool(get_weather, name="get_weather", title="Weather (sample data)",
                    description=WEATHER_DESCRIPTION, structured_output=False)
    server.add_tool(calculator, name="calculator", title="Calculator",
                    description=CALCULATOR_DESCRIPTION, structured_output=False)
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m manager.chat.mcp_builtin",
                                     description="The built-in MCP server (weather, calculator).")
    parser.add_argument("--transport", choices=("stdio", "streamable-http"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8931)
    args = parser.parse_args(argv)
    # The SDK's imports build a few hundred thousand objects (its pydantic models) that
    # live as long as the server; the full garbage collections they set off while being
    # built were a fifth of the start's CPU. Built, they are frozen out of later ones.
    gc.disable()
    server = build_server()
    gc.freeze()
    gc.enable()
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
