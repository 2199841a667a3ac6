"""The parts of Ollama that a Modelfile meets, in Python, for tests (Ollama itself cannot be installed here).

- `parse_modelfile`: Ollama's Modelfile parser (parser/parser.go: `ParseFile`, a state machine over runes,
  and the checks of `CreateRequest`: known commands, message roles, parameter names and value types).
- `render`: the subset of Go's text/template that Ollama TEMPLATEs use: text, `{{ pipeline }}` with the
  `{{-` / `-}}` trim markers, comments, `if` / `else if` / `else`, `range` (with `$i, $x :=`, `else`,
  `break`, `continue`), variables (`:=`, `=`, `$`), fields (`.Role`, `$.System`, `$x.Content`), literals,
  parentheses, `|` and the functions eq, ne, lt, le, gt, ge, not, and, or, len, index, slice, print,
  printf (%s %d %v %q). Anything else is an error, never a guess.
- `ollama_prompt`: what Ollama's chat endpoint renders for a conversation (server/routes.go: the
  Modelfile's SYSTEM when the messages have none; template/template.go `Execute`: consecutive messages of
  one role merged, `.System` all system messages joined by a blank line).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# --- Modelfile --------------------------------------------------------------------------------------------

COMMANDS = "from license template system adapter draft renderer parser parameter message requires".split()
# api.Options and api.Runner: each parameter's JSON name and the Go kind FormatParams parses it as.
PARAMETERS = {
    **dict.fromkeys(
        "num_keep seed num_predict top_k repeat_last_n num_ctx num_batch num_gpu main_gpu num_thread "
        "draft_num_predict".split(),
        "int",
    ),
    **dict.fromkeys(
        "top_p min_p typical_p temperature repeat_penalty presence_penalty frequency_penalty".split(), "float"
    ),
    "use_mmap": "bool",
    "stop": "list",
}
# Accepted with a warning (parser.go deprecatedParameters).
DEPRECATED = set(
    "penalize_newline low_vram f16_kv logits_all vocab_only use_mlock mirostat mirostat_tau "
    "mirostat_eta".split()
)


class ModelfileError(ValueError):
    pass


@dataclass
class Modelfile:
    commands: list[tuple[str, str]]

    def one(self, name: str) -> str | None:
        values = [v for n, v in self.commands if n == name]
        return values[-1] if values else None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.commands if n == name]


def _unquote(s: str) -> tuple[str, bool]:
    if s.startswith('"""'):
        return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
    if s.startswith('"'):
        return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
    return s, True


def _is_print(r: str) -> bool:
    """Go's strconv.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space."""
    return r == " " or (r.isprintable() and not r.isspace())


def _next_state(r: str, state: str, line: int) -> tuple[str, str | None]:
    alpha = r.isascii() and r.isalpha()
    space, newline = r in " \t", r in "\r\n"
    if state == "nil":
        if r == "#":
            return "comment", None
        return ("nil", None) if space or newline else ("name", r)
    if state == "name":
        if alpha:
            return "name", r
        if space:
            return "value", None
        raise ModelfileError(f"line {line}: command must be one of {', '.join(COMMANDS)}")
    if state == "value":
        return ("nil", r) if space or newline else ("value", r)
    if state == "parameter":
        if alpha or (r.isascii() and r.isdigit()) or r == "_":
            return "parameter", r
        if space:
            return "value", None
        raise ModelfileError(f"line {line}: unexpected {r!r} in a parameter name")
    if state == "message":
        if alpha:
            return "message", r
        if space:
            return "value", None
        raise ModelfileError(f"line {line}: unexpected {r!r} in a message role")
    return ("nil", None) if newline else ("comment", None)  # comment


def parse_file(text: str) -> list[tuple[str, str]]:
    """Ollama's ParseFile: the (command, value) pairs; a parameter's command is its name."""
    commands: list[tuple[str, str]] = []
    name, state, role, line = "", "nil", "", 1
    buf: list[str] = []
    for r in text.removeprefix("\ufeff"):
        if r in "\r\n":
            line += 1
        nxt, out = _next_state(r, state, line)
        if nxt != state:
            word = "".join(buf)
            if state == "name":
                if word.lower() not in COMMANDS:
                    raise ModelfileError(f"line {line}: command must be one of {', '.join(COMMANDS)}")
                name = {"from": "model"}.get(word.lower(), word.lower())
                nxt = {"parameter": "parameter", "message": "message"}.get(word.lower(), nxt)
            elif state == "parameter":
                name = word
            elif state == "message":
                if word not in ("system", "user", "assistant"):
                    raise ModelfileError(f"line {line}: message role must be system, user or assistant")
                role = word
            elif state == "value":
                value, ok = _unquote(word.strip())
                if not ok or r in " \t":  # inside quotes, or a space inside the value: keep reading
                    buf.append(r)
                    continue
                commands.append((name, f"{role}: {value}" if role else value))
                role = ""
            buf = []
            state = nxt
        if out is not None and _is_print(out):
            buf.append(out)
    if state == "value":
        value, ok = _unquote("".join(buf).strip())
        if not ok:
            raise ModelfileError("unexpected end of file inside a quoted value")
        commands.append((name, f"{role}: {value}" if role else value))
    elif state not in ("nil", "comment"):
        raise ModelfileError("unexpected end of file")
    if not any(n == "model" for n, _ in commands):
        raise ModelfileError("no FROM line")
    return commands


def parse_modelfile(text: str) -> Modelfile:
    """ParseFile, then CreateRequest's checks of each command's value."""
    commands = parse_file(text)
    for n, value in commands:
        if n in ("model", "adapter", "draft", "template", "system", "license", "renderer", "parser"):
            continue
        if n == "message":
            continue
        if n == "requires":
            if not re.fullmatch(r"v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", value):
                raise ModelfileError("requires must be a valid semver (e.g. 0.14.0)")
            continue
        if n in DEPRECATED:
            continue
        kind = PARAMETERS.get(n)
        if kind is None:
            raise ModelfileError(f"unknown parameter '{n}'")
        try:
            if kind == "int":
                if not re.fullmatch(r"[+-]?\d+", value):
                    raise ValueError
            elif kind == "float":
                float(value)
            elif kind == "bool" and value not in (
                "1",
                "t",
                "T",
                "TRUE",
                "true",
                "True",
                "0",
                "f",
                "F",
                "FALSE",
                "false",
                "False",
            ):
                raise ValueError
        except ValueError:
            raise ModelfileError(f"invalid {kind} value {value!r} for parameter '{n}'") from None
    return Modelfile(commands)


# --- Go text/template --------------------------------------------------------------------------------------


class TemplateError(ValueError):
    pass


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*") | (?P<raw>`[^`]*`) | (?P<decl>:=) | (?P<punct>[()|,=])
    | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
    | (?P<num>-?\d+(?:\.\d+)?) | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.X,
)


def _tokens(source: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while source[pos:].strip():
        m = _TOKEN.match(source, pos)
        if not m:
            raise TemplateError(f"cannot read {source[pos:]!r}")
        kind = m.lastgroup
        assert kind is not None
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


@dataclass
class _Node:
    kind: str  # text, print, if, range, assign, break, continue
    text: str = ""
    pipe: list[Any] = field(default_factory=list)  # commands; each a list of operands
    branches: list[tuple[list[Any], list[_Node]]] = field(default_factory=list)  # if: (pipe, body)
    body: list[_Node] = field(default_factory=list)
    else_body: list[_Node] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # range variables / assigned variable
    declare: bool = False


def _split_actions(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", s)], trim markers applied to the neighbouring text, comments dropped."""
    parts: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    while True:
        start = template.find("{{", pos)
        text = template[pos:] if start < 0 else template[pos:start]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if start < 0:
            parts.append(("text", text))
            return parts
        end = template.find("}}", start)
        if end < 0:
            raise TemplateError("unclosed action")
        inner = template[start + 2 : end]
        if re.match(r"-[ \t\r\n]", inner):  # "{{- ": trim the whitespace before
            text = text.rstrip(" \t\r\n")
            inner = inner[1:]
        trim_next = re.search(r"[ \t\r\n]-$", inner) is not None  # " -}}": trim the whitespace after
        if trim_next:
            inner = inner[:-1]
        parts.append(("text", text))
        stripped = inner.strip()
        if stripped.startswith("/*"):
            if not stripped.endswith("*/"):
                raise TemplateError("unclosed comment")
        else:
            parts.append(("action", stripped))
        pos = end + 2


class _Parser:
    def __init__(self, template: str):
        self.parts = _split_actions(template)
        self.i = 0

    def parse(self) -> list[_Node]:
        body, stop = self.block()
        if stop is not None:
            raise TemplateError(f"unexpected {{{{ {stop} }}}}")
        return body

    def block(self) -> tuple[list[_Node], str | None]:
        """Nodes up to an `else...` or `end` action (returned, consumed) or the end of the template."""
        nodes: list[_Node] = []
        while self.i < len(self.parts):
            kind, value = self.parts[self.i]
            self.i += 1
            if kind == "text":
                if value:
                    nodes.append(_Node("text", text=value))
                continue
            tokens = _tokens(value)
            if not tokens:
                raise TemplateError("empty action")
            head = tokens[0]
            if head == ("ident", "end") or head == ("ident", "else"):
                return nodes, value
            if head == ("ident", "if"):
                nodes.append(self.if_node(tokens[1:]))
            elif head == ("ident", "range"):
                nodes.append(self.range_node(tokens[1:]))
            elif head[1] in ("break", "continue") and head[0] == "ident":
                nodes.append(_Node(head[1]))
            elif head[0] == "ident" and head[1] in ("with", "template", "define", "block"):
                raise TemplateError(f"'{head[1]}' is not supported by this renderer")
            elif head[0] == "var" and len(tokens) > 1 and tokens[1][1] in (":=", "="):
                nodes.append(
                    _Node("assign", names=[head[1]], declare=tokens[1][1] == ":=", pipe=_pipe(tokens[2:]))
                )
            else:
                nodes.append(_Node("print", pipe=_pipe(tokens)))
        return nodes, None

    def if_node(self, tokens: list[tuple[str, str]]) -> _Node:
        node = _Node("if")
        pipe = _pipe(tokens)
        while True:
            body, stop = self.block()
            node.branches.append((pipe, body))
            if stop is None:
                raise TemplateError("if without end")
            stop_tokens = _tokens(stop)
            if stop_tokens == [("ident", "end")]:
                return node
            if stop_tokens[:2] == [("ident", "else"), ("ident", "if")]:
                pipe = _pipe(stop_tokens[2:])
                continue
            if stop_tokens == [("ident", "else")]:
                node.else_body, stop = self.block()
                if stop is None or _tokens(stop) != [("ident", "end")]:
                    raise TemplateError("else without end")
                return node
            raise TemplateError(f"unexpected {{{{ {stop} }}}}")

    def range_node(self, tokens: list[tuple[str, str]]) -> _Node:
        node = _Node("range")
        if ("decl", ":=") in tokens:
            at = tokens.index(("decl", ":="))
            node.names = [v for k, v in tokens[:at] if k == "var"]
            if not 1 <= len(node.names) <= 2:
                raise TemplateError("range takes one or two variables")
            tokens = tokens[at + 1 :]
        node.pipe = _pipe(tokens)
        node.body, stop = self.block()
        if stop is None:
            raise TemplateError("range without end")
        if _tokens(stop) == [("ident", "else")]:
            node.else_body, stop = self.block()
        if stop is None or _tokens(stop) != [("ident", "end")]:
            raise TemplateError("range without end")
        return node


def _pipe(tokens: list[tuple[str, str]]) -> list[Any]:
    """Commands separated by `|`; each command a list of operands (nested pipes for parentheses)."""
    if not tokens:
        raise TemplateError("missing value")
    commands: list[list[Any]] = [[]]
    i = 0
    while i < len(tokens):
        kind, value = tokens[i]
        if value == "|" and kind == "punct":
            commands.append([])
        elif value == "(" and kind == "punct":
            depth, j = 1, i + 1
            while depth:
                if j >= len(tokens):
                    raise TemplateError("unclosed parenthesis")
                depth += {"(": 1, ")": -1}.get(tokens[j][1], 0) if tokens[j][0] == "punct" else 0
                j += 1
            commands[-1].append(("pipe", _pipe(tokens[i + 1 : j - 1])))
            i = j
            continue
        elif kind == "punct" or kind == "decl":
            raise TemplateError(f"unexpected '{value}'")
        else:
            commands[-1].append((kind, value))
        i += 1
    if any(not c for c in commands):
        raise TemplateError("empty command in a pipeline")
    return commands


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def _truth(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return bool(value)
    return True


def _show(value: Any) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_show(v) for v in value) + "]"
    return str(value)


def _comparable(a: Any, b: Any) -> None:
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if type(a) is not type(b) and not (number(a) and number(b)):
        raise TemplateError(f"incompatible types for comparison: {type(a).__name__}, {type(b).__name__}")


def _printf(fmt: str, *args: Any) -> str:
    values = iter(args)

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        value = next(values)
        if m.group(1) == "q":
            return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        return _show(value)

    return re.sub(r"%%|%([sdvq])", one, fmt)


def _len(value: Any) -> int:
    if not isinstance(value, (str, list, tuple, dict)):
        raise TemplateError(f"len of {type(value).__name__}")
    return len(value.encode() if isinstance(value, str) else value)  # Go: bytes of a string


FUNCS = {
    "not": lambda a: not _truth(a),
    "len": _len,
    "index": lambda a, *keys: _index(a, keys),
    "slice": lambda a, *ij: a[ij[0] if ij else 0 : ij[1] if len(ij) > 1 else len(a)],
    "print": lambda *a: "".join(_show(v) for v in a),
    "printf": _printf,
}


def _index(value: Any, keys: tuple[Any, ...]) -> Any:
    for key in keys:
        value = value[key]
    return value


class _Run:
    def __init__(self, data: Any):
        self.root = data
        self.scopes: list[dict[str, Any]] = [{"$": data}]
        self.out: list[str] = []

    def lookup(self, name: str) -> Any:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise TemplateError(f"undefined variable {name}")

    def assign(self, name: str, value: Any) -> None:
        for scope in reversed(self.scopes):
            if name in scope:
                scope[name] = value
                return
        raise TemplateError(f"undefined variable {name}")

    @staticmethod
    def fields(value: Any, names: list[str]) -> Any:
        for name in names:
            if not isinstance(value, dict) or name not in value:
                raise TemplateError(f"can't evaluate field {name} in {type(value).__name__}")
            value = value[name]
        return value

    def operand(self, op: tuple[str, Any], dot: Any) -> Any:
        kind, value = op
        if kind == "pipe":
            return self.pipe(value, dot)
        if kind == "field":
            return dot if value == "." else self.fields(dot, value.split(".")[1:])
        if kind == "var":
            name, *names = value.split(".")
            return self.fields(self.lookup(name), names)
        if kind == "str":
            try:  # Go's escapes (\n, \t, \", \\, \uXXXX) read as JSON's
                return json.loads(value)
            except ValueError:
                raise TemplateError(f"bad string literal {value}") from None
        if kind == "raw":
            return value[1:-1]
        if kind == "num":
            return float(value) if "." in value else int(value)
        if kind == "ident" and value in ("true", "false"):
            return value == "true"
        if kind == "ident" and value == "nil":
            return None
        raise TemplateError(f"unexpected {value!r}")

    def command(self, command: list[Any], dot: Any, piped: list[Any]) -> Any:
        head_kind, head = command[0]
        if head_kind != "ident" or head in ("true", "false", "nil"):
            if len(command) > 1 or piped:
                raise TemplateError(f"can't give arguments to a non-function {head}")
            return self.operand(command[0], dot)
        if head in ("and", "or"):  # short-circuit: the deciding argument's value, as Go returns it
            args = command[1:]
            value = None
            for op in args:
                value = self.operand(op, dot)
                if _truth(value) != (head == "and"):
                    return value
            return piped[0] if piped else value
        args = [self.operand(op, dot) for op in command[1:]] + piped
        if head in ("eq", "ne", "lt", "le", "gt", "ge"):
            if len(args) < 2 or (head != "eq" and len(args) != 2):
                raise TemplateError(f"{head}: wrong number of arguments")
            for other in args[1:]:
                _comparable(args[0], other)
            if head == "eq":
                return any(args[0] == other for other in args[1:])
            a, b = args
            return {"ne": a != b, "lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[head]
        if head not in FUNCS:
            raise TemplateError(f'function "{head}" not defined')
        return FUNCS[head](*args)

    def pipe(self, pipe: list[Any], dot: Any) -> Any:
        value: list[Any] = []
        for command in pipe:
            value = [self.command(command, dot, value)]
        return value[0]

    def run(self, nodes: list[_Node], dot: Any) -> None:
        for node in nodes:
            if node.kind == "text":
                self.out.append(node.text)
            elif node.kind == "print":
                self.out.append(_show(self.pipe(node.pipe, dot)))
            elif node.kind == "assign":
                value = self.pipe(node.pipe, dot)
                if node.declare:
                    self.scopes[-1][node.names[0]] = value
                else:
                    self.assign(node.names[0], value)
            elif node.kind == "if":
                for pipe, body in node.branches:
                    if _truth(self.pipe(pipe, dot)):
                        self.scoped(body, dot, {})
                        break
                else:
                    self.scoped(node.else_body, dot, {})
            elif node.kind == "range":
                self.range(node, dot)
            elif node.kind == "break":
                raise _Break
            else:
                raise _Continue

    def scoped(self, nodes: list[_Node], dot: Any, variables: dict[str, Any]) -> None:
        self.scopes.append(variables)
        try:
            self.run(nodes, dot)
        finally:
            self.scopes.pop()

    def range(self, node: _Node, dot: Any) -> None:
        items = self.pipe(node.pipe, dot)
        if items is None:
            items = []
        if isinstance(items, dict):
            pairs = sorted(items.items())
        elif isinstance(items, (list, tuple)):
            pairs = list(enumerate(items))
        elif isinstance(items, int):
            pairs = [(i, i) for i in range(items)]
        else:
            raise TemplateError(f"range can't iterate over {type(items).__name__}")
        if not pairs:
            self.scoped(node.else_body, dot, {})
            return
        for key, item in pairs:
            names = node.names
            variables = dict(zip(names, (key, item))) if len(names) == 2 else dict.fromkeys(names, item)
            try:
                self.scoped(node.body, item, variables)
            except _Break:
                break
            except _Continue:
                continue


def parse(template: str) -> list[_Node]:
    return _Parser(template).parse()


def render(template: str, data: Any) -> str:
    """The text Go's text/template writes for `template` executed on `data` (dicts for structs and maps)."""
    run = _Run(data)
    run.run(parse(template), data)
    return "".join(run.out)


# --- Ollama's chat endpoint --------------------------------------------------------------------------------


def ollama_prompt(modelfile: Modelfile, messages: list[dict[str, str]]) -> str:
    """The prompt text Ollama renders from the Modelfile's TEMPLATE for a chat request."""
    template = modelfile.one("template")
    if template is None or ".Messages" not in template:
        raise TemplateError("the TEMPLATE does not range over .Messages")
    system = modelfile.one("system")
    if system and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": system}, *messages]
    collated: list[dict[str, Any]] = []
    for m in messages:
        if collated and collated[-1]["Role"] == m["role"]:
            collated[-1]["Content"] += "\n\n" + m["content"]
        else:
            collated.append({"Role": m["role"], "Content": m["content"]})
    data = {
        "System": "\n\n".join(m["content"] for m in messages if m["role"] == "system"),
        "Messages": collated,
        "Tools": None,
        "Response": "",
        "Think": False,
        "ThinkLevel": "",
        "IsThinkSet": False,
    }
    return render(template, data)
