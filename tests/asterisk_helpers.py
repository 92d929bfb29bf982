"""A small model of Asterisk's dialplan engine that runs deploy/asterisk/extensions.conf.

Not a test module. No Asterisk package exists for the machines ocs is tested on, so
tests/test_asterisk_dialplan.py runs the shipped dialplan's contexts here instead:
the file is parsed as it is shipped, and its steps are run one by one, its HTTP
requests going to a real ocs. The model knows only what the dialplan uses, and fails
on anything else rather than guessing:

- ``exten =>`` and ``same =>`` lines, priorities ``1`` and ``n``, labels ``n(label)``,
  comments after ``;``, and ``[globals]``;
- ``${VAR}``, ``${FUNC(args)}`` (CURL, JSON_DECODE, IF, FILTER, CHANNEL) and ``$[expr]``
  (``| & = != < > <= >= + - * /``, strings in double quotes), expanded innermost first;
- the applications Set (with LOCAL() and CURLOPT()), GotoIf, Goto, Gosub, Return, Log,
  NoOp, Wait and TrySystem (only ``sleep N``).

What it models of Asterisk's behaviour, as its source and documentation describe it:
CURL() answers the body whatever the HTTP status, and nothing when the request fails;
CURLOPT(httpheader) adds a header each time it is set; a variable nobody set is empty.
Wait() services the channel, and a read of a hung-up one fails (a hangup handler's),
which ends the handler: the model takes that worst case, so a dialplan that pauses
with Wait() in its hangup handler never gets past the pause here. Pauses are not
slept: they move the channel's clock (EPOCH) on.
"""

import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DIALPLAN = REPO / "deploy/asterisk/extensions.conf"

_EXTEN = re.compile(r"^exten\s*=>\s*([^,]+),([^,]+),(.*)$")
_SAME = re.compile(r"^same\s*=>\s*([^,]+),(.*)$")
_APP = re.compile(r"^(\w+)\((.*)\)$", re.S)
_FUNCTION = re.compile(r"^(\w+)\((.*)\)$", re.S)
_TOKEN = re.compile(r'\s*("[^"]*"|!=|<=|>=|[=<>+\-*/&|()]|[^\s"=<>+\-*/&|()!]+)')


class HandlerEnded(Exception):
    """An application failed (returned -1): Asterisk ends the channel's dialplan there."""


@dataclass
class Step:
    """One priority of an extension: its label (or None), application and raw data."""

    label: str | None
    app: str
    data: str


@dataclass
class Channel:
    """One channel's state: its variables, CURL options, log lines and pauses."""

    variables: dict[str, str]
    hung_up: bool = False
    headers: list[str] = field(default_factory=list)
    timeout_s: float = 30.0
    log: list[tuple[str, str]] = field(default_factory=list)
    pauses: list[float] = field(default_factory=list)

    def logged(self, level: str) -> list[str]:
        """The messages logged at ``level`` (NOTICE, WARNING, ERROR), in order."""
        return [message for at, message in self.log if at == level]


@dataclass
class _Frame:
    """A Gosub's own state: its LOCAL() variables and ARGn."""

    locals: dict[str, str]


def _strip_comment(line: str) -> str:
    """``line`` without its comment (an unescaped ``;`` and what follows)."""
    out = re.split(r"(?<!\\);", line, maxsplit=1)[0]
    return out.strip()


def parse(text: str) -> tuple[dict[str, str], dict[str, dict[str, list[Step]]]]:
    """The globals and the contexts (context -> extension -> steps) of a dialplan."""
    globals_: dict[str, str] = {}
    contexts: dict[str, dict[str, list[Step]]] = {}
    context = ""
    exten = ""
    for raw in text.splitlines():
        line = _strip_comment(raw)
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            context = line[1:-1]
            contexts.setdefault(context, {})
            continue
        if context == "globals":
            name, _, value = line.partition("=")
            globals_[name.strip()] = value.strip()
            continue
        if match := _EXTEN.match(line):
            exten, priority, command = match.groups()
            assert priority == "1", f"an extension starts at priority 1: {raw}"
            contexts[context][exten] = []
        elif match := _SAME.match(line):
            priority, command = match.groups()
        else:
            raise AssertionError(f"not a dialplan line the model knows: {raw}")
        label = re.fullmatch(r"(?:n|\d+)(?:\((\w+)\))?", priority.strip())
        assert label, f"a priority the model does not know: {raw}"
        app = _APP.match(command.strip())
        assert app, f"not an application call: {raw}"
        contexts[context][exten].append(Step(label.group(1), app.group(1), app.group(2)))
    return globals_, contexts


def _closing(text: str, start: int, opening: str, closing: str) -> int:
    """The index of the ``closing`` that ends what opened just before ``start``."""
    depth = 1
    for index in range(start, len(text)):
        if text[index] == opening:
            depth += 1
        elif text[index] == closing:
            depth -= 1
            if depth == 0:
                return index
    raise AssertionError(f"unbalanced {opening}{closing} in {text!r}")


def _number(value: str) -> float | None:
    """``value`` as a number, or None when it is not one."""
    try:
        return float(value)
    except ValueError:
        return None


def _truth(value: str) -> bool:
    """Asterisk's truth of a condition: empty and 0 are false, any other text true."""
    number = _number(value.strip())
    return bool(number) if number is not None else value.strip() != ""


class _Expression:
    """``$[...]``: Asterisk's expression language, as much as the dialplan uses."""

    LEVELS = (("|",), ("&",), ("=", "!=", "<", ">", "<=", ">="), ("+", "-"), ("*", "/"))

    def __init__(self, text: str) -> None:
        self.tokens: list[str] = _TOKEN.findall(text)
        assert self.tokens, f"an empty expression: $[{text}]"
        self.at = 0

    def value(self) -> str:
        """The whole expression's value."""
        result = self._level(0)
        assert self.at == len(self.tokens), f"trailing tokens in {self.tokens}"
        return result

    def _level(self, level: int) -> str:
        if level == len(self.LEVELS):
            return self._operand()
        left = self._level(level + 1)
        while self.at < len(self.tokens) and self.tokens[self.at] in self.LEVELS[level]:
            operator = self.tokens[self.at]
            self.at += 1
            left = _apply(operator, left, self._level(level + 1))
        return left

    def _operand(self) -> str:
        token = self.tokens[self.at]
        self.at += 1
        if token == "(":
            inner = self._level(0)
            assert self.tokens[self.at] == ")", self.tokens
            self.at += 1
            return inner
        return token[1:-1] if token.startswith('"') else token


def _apply(operator: str, left: str, right: str) -> str:
    """One binary operator, numeric when both sides are numbers, else on the text."""
    if operator == "|":
        return left if _truth(left) else right
    if operator == "&":
        return left if _truth(left) and _truth(right) else "0"
    a, b = _number(left), _number(right)
    if operator in ("+", "-", "*", "/"):
        assert a is not None and b is not None, f"arithmetic on text: {left} {operator} {right}"
        result = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[operator]
        return str(int(result)) if result == int(result) else str(result)
    # -1, 0 or 1: numbers compare as numbers, anything else as text.
    if a is not None and b is not None:
        order = (a > b) - (a < b)
    else:
        order = (left > right) - (left < right)
    compared = {
        "=": order == 0,
        "!=": order != 0,
        "<": order < 0,
        ">": order > 0,
        "<=": order <= 0,
        ">=": order >= 0,
    }[operator]
    return "1" if compared else "0"


def _filter(allowed: str, text: str) -> str:
    """FILTER(): the characters of ``text`` that ``allowed`` lists (``a-z`` ranges,
    ``\\-`` a literal hyphen)."""
    chars: set[str] = set()
    index = 0
    while index < len(allowed):
        if allowed[index] == "\\" and index + 1 < len(allowed):
            chars.add(allowed[index + 1])
            index += 2
        elif index + 2 < len(allowed) and allowed[index + 1] == "-":
            chars.update(chr(c) for c in range(ord(allowed[index]), ord(allowed[index + 2]) + 1))
            index += 3
        else:
            chars.add(allowed[index])
            index += 1
    return "".join(c for c in text if c in chars)


def _json_decode(document: str, key: str) -> str:
    """JSON_DECODE(): the value at ``key`` (dots go deeper) as text; empty when the
    document is not JSON or has no such key."""
    try:
        value: object = json.loads(document)
    except ValueError:
        return ""
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return ""
        value = value[part]
    if value is None or isinstance(value, dict | list):
        return ""
    return str(value)


class Dialplan:
    """The shipped dialplan, with ``overrides`` of its globals (OCS_URL, OCS_TOKEN, ...)."""

    def __init__(self, overrides: dict[str, str], path: Path = DIALPLAN) -> None:
        self.globals, self.contexts = parse(path.read_text())
        self.globals.update(overrides)

    def gosub(self, channel: Channel, context: str, *args: str) -> None:
        """Run ``context``'s ``s`` extension from priority 1 as Gosub does (a hangup
        handler is run the same way), until its Return(). An application that fails
        ends it, as it ends the handler in Asterisk."""
        try:
            self._run(channel, context, "s", list(args))
        except HandlerEnded:
            channel.log.append(("ENDED", context))

    def _run(self, channel: Channel, context: str, exten: str, args: list[str]) -> None:
        steps = self.contexts[context][exten]
        frame = _Frame({f"ARG{n}": value for n, value in enumerate(args, start=1)})
        at = 0
        while at < len(steps):
            step = steps[at]
            data = self._expand(channel, frame, step.data)
            jump = self._execute(channel, frame, step.app, data)
            if jump == "RETURN":
                return
            if jump is not None:
                at = self._label(steps, jump)
            else:
                at += 1
        raise AssertionError(f"{context} ran off its end without Return()")

    @staticmethod
    def _label(steps: list[Step], label: str) -> int:
        indexes = [index for index, step in enumerate(steps) if step.label == label]
        assert indexes, f"no label {label!r}"
        return indexes[0]

    def _execute(self, channel: Channel, frame: _Frame, app: str, data: str) -> str | None:
        """Run one application; a label to go to, "RETURN", or None to go on."""
        if app == "Set":
            name, _, value = data.partition("=")
            self._set(channel, frame, name, value)
        elif app == "GotoIf":
            condition, _, targets = data.partition("?")
            when_true, _, when_false = targets.partition(":")
            target = when_true if _truth(condition) else when_false
            return target.strip() or None
        elif app == "Goto":
            assert "," not in data, f"Goto out of the extension: {data}"
            return data.strip()
        elif app == "Gosub":
            match = re.fullmatch(r"([\w-]+),(\w+),1(?:\((.*)\))?", data, re.S)
            assert match, f"a Gosub the model does not know: {data}"
            self._run(channel, match.group(1), match.group(2), (match.group(3) or "").split(","))
        elif app == "Return":
            return "RETURN"
        elif app == "Log":
            level, _, message = data.partition(",")
            channel.log.append((level, message))
        elif app == "Wait":
            if channel.hung_up:
                raise HandlerEnded(app)
            channel.pauses.append(float(data))
        elif app == "TrySystem":
            match = re.fullmatch(r"sleep (\d+(?:\.\d+)?)", data.strip())
            assert match, f"the model runs no shell: {data}"
            channel.pauses.append(float(match.group(1)))
        elif app != "NoOp":
            raise AssertionError(f"an application the model does not know: {app}")
        return None

    def _set(self, channel: Channel, frame: _Frame, name: str, value: str) -> None:
        if match := re.fullmatch(r"LOCAL\((\w+)\)", name):
            frame.locals[match.group(1)] = value
        elif name == "CURLOPT(httpheader)":
            channel.headers.append(value)
        elif name in ("CURLOPT(conntimeout)", "CURLOPT(httptimeout)"):
            channel.timeout_s = float(value)
        else:
            assert re.fullmatch(r"\w+", name), f"a Set the model does not know: {name}"
            channel.variables[name] = value

    def _expand(self, channel: Channel, frame: _Frame, text: str) -> str:
        """``text`` with every ``${...}`` and ``$[...]`` replaced, innermost first."""
        out: list[str] = []
        index = 0
        while index < len(text):
            if text.startswith("${", index):
                end = _closing(text, index + 2, "{", "}")
                inner = self._expand(channel, frame, text[index + 2 : end])
                out.append(self._resolve(channel, frame, inner))
                index = end + 1
            elif text.startswith("$[", index):
                end = _closing(text, index + 2, "[", "]")
                inner = self._expand(channel, frame, text[index + 2 : end])
                out.append(_Expression(inner).value())
                index = end + 1
            else:
                out.append(text[index])
                index += 1
        return "".join(out)

    def _resolve(self, channel: Channel, frame: _Frame, inner: str) -> str:
        """The value of one ``${inner}``: a function's or a variable's."""
        match = _FUNCTION.match(inner)
        if match is None:
            if inner == "EPOCH":
                return str(int(time.time() + sum(channel.pauses)))
            for scope in (frame.locals, channel.variables, self.globals):
                if inner in scope:
                    return scope[inner]
            return ""
        name, args = match.groups()
        first, _, rest = args.partition(",")
        if name == "CURL":
            return self._curl(channel, first, rest if "," in args else None)
        if name == "JSON_DECODE":
            return _json_decode(self._resolve(channel, frame, first), rest)
        if name == "IF":
            condition, _, choices = args.partition("?")
            when_true, _, when_false = choices.partition(":")
            return when_true if _truth(condition) else when_false
        if name == "FILTER":
            return _filter(first, rest)
        if name == "CHANNEL":
            return channel.variables.get(f"CHANNEL({args})", "")
        raise AssertionError(f"a function the model does not know: {name}")

    @staticmethod
    def _curl(channel: Channel, url: str, data: str | None) -> str:
        """CURL(): the answer's body whatever its status; empty when none came."""
        headers = dict(header.split(": ", 1) for header in channel.headers)
        request = urllib.request.Request(
            url,
            data=None if data is None else data.encode(),
            headers=headers,
            method="GET" if data is None else "POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=channel.timeout_s) as answer:
                return str(answer.read().decode())
        except urllib.error.HTTPError as refused:
            return str(refused.read().decode())
        except (urllib.error.URLError, HTTPException, OSError):
            return ""
