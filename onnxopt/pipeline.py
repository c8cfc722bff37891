"""Pipeline strings (MLIR's textual pass-pipeline grammar, without the op anchor).

    pipeline := element ("," element)*
    element  := NAME options? ( "(" pipeline ")" )?
    options  := "{" ( KEY ("=" VALUE)? )* "}"     # space separated; bare KEY means true

``str(parse(s))`` is the canonical form with every option filled in, and
``parse(str(p)) == p`` for every pipeline ``p``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import options as opts
from .errors import UsageError
from .registry import get_pass


@dataclass(frozen=True)
class FixpointOptions:
    max_iters: int = field(default=10, metadata={"help": "stop after this many sweeps"})

    def __post_init__(self):
        if self.max_iters < 1:
            raise ValueError("max-iters must be >= 1")


GROUPS: dict[str, type] = {"fixpoint": FixpointOptions}
GROUP_HELP = {"fixpoint": "repeat the nested pipeline until no pass changes the graph"}


@dataclass(frozen=True)
class Element:
    """One pass (or group) with its fully resolved options."""

    name: str
    options: Any
    children: tuple["Element", ...] | None = None

    @property
    def is_group(self) -> bool:
        return self.children is not None

    def __str__(self) -> str:
        pairs = opts.as_pairs(self.options)
        text = self.name
        if pairs:
            text += "{" + " ".join(f"{k}={opts.format_value(v)}" for k, v in pairs) + "}"
        if self.children is not None:
            text += "(" + ",".join(str(c) for c in self.children) + ")"
        return text


@dataclass(frozen=True)
class Pipeline:
    elements: tuple[Element, ...]

    def __str__(self) -> str:
        return ",".join(str(e) for e in self.elements)

    def __iter__(self):
        return iter(self.elements)

    def __len__(self) -> int:
        return len(self.elements)


def parse(text: str) -> Pipeline:
    """Parse and validate a pipeline string against the registry."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError("empty pipeline")
    parser = _Parser(text)
    elements = parser.pipeline()
    parser.skip_ws()
    if parser.pos != len(text):
        parser.fail(f"unexpected '{text[parser.pos]}'")
    return Pipeline(tuple(elements))


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def fail(self, message: str):
        raise UsageError(f"pipeline '{self.text}': {message} at column {self.pos + 1}")

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_ws()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            self.fail(f"expected '{ch}'")
        self.pos += 1

    def word(self, what: str) -> str:
        self.skip_ws()
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] in "_-.:"):
            self.pos += 1
        if start == self.pos:
            self.fail(f"expected {what}")
        return self.text[start:self.pos]

    def value(self) -> str:
        self.skip_ws()
        if self.peek() == '"':
            self.pos += 1
            out = []
            while self.pos < len(self.text) and self.text[self.pos] != '"':
                if self.text[self.pos] == "\\" and self.pos + 1 < len(self.text):
                    self.pos += 1
                out.append(self.text[self.pos])
                self.pos += 1
            if self.pos >= len(self.text):
                self.fail("unterminated string")
            self.pos += 1
            return "".join(out)
        start = self.pos
        while self.pos < len(self.text) and not self.text[self.pos].isspace() and self.text[self.pos] not in "{}()":
            self.pos += 1
        return self.text[start:self.pos]

    def pipeline(self) -> list[Element]:
        elements = [self.element()]
        while self.peek() == ",":
            self.pos += 1
            elements.append(self.element())
        return elements

    def element(self) -> Element:
        name = self.word("a pass name")
        given: dict[str, str | bool] = {}
        if self.peek() == "{":
            self.pos += 1
            while self.peek() not in ("}", ""):
                key = self.word("an option name")
                if key in given:
                    self.fail(f"option '{key}' given twice")
                if self.peek() == "=":
                    self.pos += 1
                    given[key] = self.value()
                else:
                    given[key] = True
            self.expect("}")
        children = None
        if self.peek() == "(":
            self.pos += 1
            children = tuple(self.pipeline())
            self.expect(")")
        if name in GROUPS:
            if children is None:
                self.fail(f"'{name}' needs a nested pipeline: {name}(pass,pass)")
            return Element(name, opts.build(GROUPS[name], given, name), children)
        if children is not None:
            self.fail(f"pass '{name}' takes no nested pipeline")
        cls = get_pass(name)
        return Element(name, opts.build(cls.Options, given, name))
