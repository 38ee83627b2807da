"""Tool registry: async Python callables exposed to the model, with JSON schemas from type hints."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, get_type_hints

import pydantic

from telephony_agent.realtime.types import ToolDefinition

ToolFunc = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A tool's return value when it needs to say more than the output.

    `respond=False` asks the runner not to request a new model response for this batch
    (e.g. `end_call`: the goodbye has been said; a new response would talk over the hang-up).
    """

    output: Any
    respond: bool = True


class ToolArgumentsError(ValueError):
    """The model's arguments do not fit the tool's parameters."""


_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _schema_for(annotation: Any) -> dict[str, Any]:
    origin = typing.get_origin(annotation)
    if annotation in _SIMPLE:
        return {"type": _SIMPLE[annotation]}
    if origin is typing.Literal:
        values = list(typing.get_args(annotation))
        return {"type": _SIMPLE.get(type(values[0]), "string"), "enum": values}
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        return {"type": "array", "items": _schema_for(args[0]) if args else {}}
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _schema_for(members[0])
    if annotation is dict or origin is dict:
        return {"type": "object"}
    return pydantic.TypeAdapter(annotation).json_schema()


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    func: ToolFunc
    parameters: dict[str, Any]
    model: type[pydantic.BaseModel] | None = None

    @property
    def definition(self) -> ToolDefinition:
        return ToolDefinition(self.name, self.description, self.parameters)

    async def invoke(self, arguments: dict[str, Any]) -> Any:
        if self.model is not None:
            try:
                parsed = self.model.model_validate(arguments)
            except pydantic.ValidationError as exc:
                raise ToolArgumentsError(str(exc)) from None
            return await self.func(parsed)
        try:
            bound = inspect.signature(self.func).bind(**arguments)
        except TypeError as exc:
            raise ToolArgumentsError(str(exc)) from None
        return await self.func(*bound.args, **bound.kwargs)


def make_tool(func: ToolFunc, name: str | None = None, description: str | None = None) -> Tool:
    """Describe `func` for the model: one pydantic-model parameter, or plain typed keyword parameters."""
    if not inspect.iscoroutinefunction(func):
        raise TypeError(f"tool {func!r} must be an async function")
    hints = get_type_hints(func)
    params = [p for p in inspect.signature(func).parameters.values() if p.name != "self"]
    desc = description or inspect.getdoc(func) or ""
    tool_name = name or func.__name__
    if len(params) == 1 and isinstance(hints.get(params[0].name), type) and issubclass(
        hints[params[0].name], pydantic.BaseModel
    ):
        model = hints[params[0].name]
        schema = model.model_json_schema()
        schema.pop("title", None)
        return Tool(tool_name, desc, func, schema, model)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for p in params:
        properties[p.name] = _schema_for(hints.get(p.name, str))
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
    return Tool(tool_name, desc, func, {"type": "object", "properties": properties, "required": required})


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(self, func: ToolFunc, name: str | None = None, description: str | None = None) -> Tool:
        tool = make_tool(func, name, description)
        self._tools[tool.name] = tool
        return tool

    def tool(self, name: str | None = None, description: str | None = None) -> Callable[[ToolFunc], ToolFunc]:
        def decorate(func: ToolFunc) -> ToolFunc:
            self.register(func, name, description)
            return func

        return decorate

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    @property
    def definitions(self) -> tuple[ToolDefinition, ...]:
        return tuple(t.definition for t in self._tools.values())

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def __len__(self) -> int:
        return len(self._tools)
