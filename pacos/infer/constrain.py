"""Constrained decoding: answers that parse as JSON and validate against a JSON schema.

The grammar engine is llguidance (MIT; one dependency-free wheel): it compiles a schema in milliseconds,
computes a row's allowed-token mask in about 20 us (49K vocabulary, this CPU), and names the schema
keywords it cannot enforce (`uniqueItems`, `not`, ...) instead of ignoring them, so a server can answer
400. Whitespace between JSON tokens is not allowed (compact JSON): a small model offered free whitespace
can loop on it forever.

A grammar alone does not make an answer parse: a small sampled model runs out of `max_tokens` inside
`"score": 4.000000...`. Hence (issue #22):
- Bounded lengths, written into the schema (llguidance has no option for them): strings without
  `maxLength` get `max_string_chars`, numbers `max_integer_digits` and `max_fraction_digits`, and free
  values (`{}`, unlisted keys, items) a bounded "any JSON value".
- Forced closing: `RowConstraint.allowed(tokens_left)` searches the fewest characters that complete a
  valid value (over a twin matcher with one token per byte, where a mask costs 1 us). Once the budget
  comes within the margin of that, only tokens spelling a shortest ending are allowed and `forced` is
  set (the engine reports "length"). The margin is what one token can add to the ending: `\\u` in a
  string, or the schema's largest optional part (a key and its shortest value), capped at `_MAX_MARGIN`.
So an answer parses and validates whenever the budget holds the shortest valid value (beyond the cap,
a token opening a larger optional part just before the end can still overrun).
"""

from __future__ import annotations

import heapq
import json
from functools import lru_cache
from typing import Any

import torch

from pacos.errors import PacosError

ANY_OBJECT: dict[str, Any] = {"type": "object"}  # OpenAI's `json_object` mode
_OVERRIDES = {"whitespace_flexible": False}
_ANY = "pacos_any"  # the bounded "any JSON value", added to the schema's $defs where it is used
_ANY_REF = {"$ref": f"#/$defs/{_ANY}"}
_ANNOTATIONS = {"title", "description", "default", "examples", "$comment"}
# Subschemas the bounds go into. Not `not`, `if` or `propertyNames`: a bound there widens what passes.
_ONE_OR_MANY = ("items", "additionalProperties", "additionalItems", "contains", "then", "else")
_ONE_OR_MANY += ("anyOf", "oneOf", "allOf", "prefixItems")
_NAMED = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
# What opening a value under each keyword costs besides the value (None: it is not opened by choice).
_OPENINGS: dict[str, int | None] = {
    **dict.fromkeys(("items", "prefixItems", "additionalItems", "contains"), 1),  # `,`
    **dict.fromkeys(("additionalProperties", "patternProperties"), 4),  # `,"":`
    **dict.fromkeys(("anyOf", "oneOf", "then", "else"), 0),
    **dict.fromkeys(("allOf", "$defs", "definitions", "dependentSchemas"), None),
}
_COMPOSED = ("allOf", "anyOf", "oneOf", "$ref", "unevaluatedProperties", "unevaluatedItems")
# The order the closing search tries characters in: endings first, so ties resolve to the plain one.
_PRIORITY = list(b'"}]0,:1tfn[{-.e') + [b for b in range(256) if b not in b'"}]0,:1tfn[{-.e']
_RANK = {b: rank for rank, b in enumerate(_PRIORITY)}
_SET_BITS = [[j for j in range(8) if m >> j & 1] for m in range(256)]
_DIGITS = set(b"23456789")
_PUNCTUATION = set(b"!#$%&'()*+,-./:;<=>?@[]^_`{|}~")
_SEARCH_WIDTH = 8  # states expanded per cost, endings kept
_MAX_EXPANDED = 4096  # states per search, about 0.1 s: beyond, the search gives up
_MAX_VALUE_CHARS = 2048  # a schema with no valid value this short is rejected (a $ref loop)
_MAX_MARGIN = 64  # a wider margin would cut answers short: beyond it, risk the overrun


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _chars(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def _min_chars(node: Any, root: dict[str, Any], memo: dict[int, int]) -> int:
    """About the length of the shortest JSON text `node` accepts (allOf and sibling keywords are ignored)."""
    if not isinstance(node, dict):
        return 1 if node is not False else _MAX_VALUE_CHARS
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = _MAX_VALUE_CHARS  # meanwhile: a loop is no shortest value
    if isinstance(node.get("$ref"), str):
        target: Any = root
        for part in node["$ref"].removeprefix("#").split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, dict) else None
        found = _min_chars(target, root, memo) if target is not None else 1
    elif "const" in node or node.get("enum"):
        found = min(_chars(v) for v in ([node["const"]] if "const" in node else node["enum"]))
    elif node.get("anyOf") or node.get("oneOf"):
        found = min(_min_chars(b, root, memo) for b in node.get("anyOf") or node["oneOf"])
    else:
        kinds = node.get("type", ["null", "number", "string", "array", "object"])
        costs = {"null": 4, "boolean": 4, "string": 2 + node.get("minLength", 0), "array": 2, "object": 2}
        low = node.get("minimum")
        costs["integer"] = costs["number"] = len(str(int(low))) if _number(low) and low > 0 else 1
        if node.get("minItems", 0) > 0:
            costs["array"] += node["minItems"] * (_min_chars(node.get("items", True), root, memo) + 1)
        props = node.get("properties", {})
        for key in node.get("required", []):
            costs["object"] += _chars(key) + 2 + _min_chars(props.get(key, True), root, memo)
        found = min(costs.get(k, 1) for k in (kinds if isinstance(kinds, list) else [kinds]))
    memo[id(node)] = found
    return found


def _opening_bound(schema: dict[str, Any]) -> int:
    """A bound on what one token can add to the shortest ending: opening an optional key, an item or an
    anyOf branch with its shortest value, or taking an enum's longer choice."""
    memo: dict[int, int] = {}
    bound = 0
    # (a subschema, the characters opening it adds to its value; None: it is not opened by choice)
    stack: list[tuple[Any, int | None]] = [(schema, None)]
    while stack:
        node, overhead = stack.pop()
        if overhead is not None and node is not False:
            bound = max(bound, overhead + _min_chars(node, schema, memo))
        if not isinstance(node, dict):
            continue
        if isinstance(node.get("enum"), list) and node["enum"]:
            bound = max(bound, max(map(_chars, node["enum"])) - min(map(_chars, node["enum"])))
        required = node.get("required", [])
        for name, sub in (node.get("properties") or {}).items():
            stack.append((sub, None if name in required else _chars(name) + 2))  # `,"name":`
        for key, overhead in _OPENINGS.items():
            for sub in _Bounds.subschemas({key: node[key]}) if key in node else []:
                stack.append((sub, overhead))
    return bound


class _Bounds:
    """The schema rewrite: the same schema, with a length on every string, number and free value."""

    def __init__(self, string_chars: int, integer_digits: int, fraction_digits: int) -> None:
        self.string_chars, self.fraction_digits = string_chars, fraction_digits
        self.limit = 10**integer_digits - 1
        self.used_any = False

    def any_value(self) -> dict[str, Any]:
        kinds = ["null", "boolean", "number", "string", "array", "object"]
        node = {"type": kinds, "items": _ANY_REF, "additionalProperties": _ANY_REF}
        return self.node(node)

    def apply(self, schema: dict[str, Any]) -> dict[str, Any]:
        root = self.walk(schema)
        if self.used_any:
            defs = root.get("$defs", {})
            root["$defs"] = {**(defs if isinstance(defs, dict) else {}), _ANY: self.any_value()}
        return root

    def walk(self, node: Any) -> Any:
        if node is True or (isinstance(node, dict) and set(node) <= _ANNOTATIONS):
            self.used_any = True
            return dict(_ANY_REF)
        if not isinstance(node, dict):
            return node
        out = dict(node)
        for key in _ONE_OR_MANY:
            if key in out:
                out[key] = [*map(self.walk, out[key])] if isinstance(out[key], list) else self.walk(out[key])
        for key in _NAMED:
            if isinstance(out.get(key), dict):
                out[key] = {name: self.walk(sub) for name, sub in out[key].items()}
        return self.node(out)

    @staticmethod
    def subschemas(node: Any) -> list[Any]:
        """`node`'s direct subschemas, what `walk` goes into."""
        if not isinstance(node, dict):
            return []
        found = [node[k] for k in _ONE_OR_MANY if k in node]
        found += [sub for k in _NAMED if isinstance(node.get(k), dict) for sub in node[k].values()]
        return [n for item in found for n in (item if isinstance(item, list) else [item])]

    def node(self, out: dict[str, Any]) -> dict[str, Any]:
        kinds = out.get("type", [])
        kinds = set(kinds if isinstance(kinds, list) else [kinds])
        if "enum" in out or "const" in out:
            return out
        free = not any(k in out for k in _COMPOSED)  # else the default would cut into allOf's siblings
        if free and "object" in kinds and "additionalProperties" not in out:
            self.used_any, out["additionalProperties"] = True, dict(_ANY_REF)
        if free and "array" in kinds and "items" not in out:
            self.used_any, out["items"] = True, dict(_ANY_REF)
        if "string" in kinds and not any(k in out for k in ("maxLength", "pattern", "format")):
            low = out.get("minLength", 0)
            out["maxLength"] = max(self.string_chars, low if isinstance(low, int) else 0)
        if kinds & {"number", "integer"}:
            low = [out[k] for k in ("minimum", "exclusiveMinimum") if _number(out.get(k))]
            high = [out[k] for k in ("maximum", "exclusiveMaximum") if _number(out.get(k))]
            if not high and all(v <= self.limit for v in low):
                out["maximum"] = self.limit
            if not low and all(v >= -self.limit for v in high):
                out["minimum"] = -self.limit
            if "number" in kinds and "multipleOf" not in out:  # also rules out exponents: 1e999
                out["multipleOf"] = 10.0**-self.fraction_digits if self.fraction_digits else 1
        return out


class _ByteVocabulary:
    """One token per byte (token b is byte b), then EOS: the closing search's vocabulary, where a mask is
    36 bytes (a model's is up to 32 KB and can cost milliseconds inside a string)."""

    eos_token_id, bos_token_id, special_token_ids = 256, None, [256]
    tokens = [bytes([b]) for b in range(256)] + [b"<eos>"]

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


class JsonGrammars:
    """Schemas compiled for one tokenizer; one `RowConstraint` per constrained row."""

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        eos_ids: list[int],
        *,
        max_string_chars: int = 512,
        max_integer_digits: int = 15,  # exact in a float64
        max_fraction_digits: int = 6,
        closing_margin: int = 8,  # the least margin: what `\u` or a number's `-`, `.` can add
    ) -> None:
        self.hf_tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = list(eos_ids)
        self.bounds = (max_string_chars, max_integer_digits, max_fraction_digits)
        self.closing_margin = closing_margin
        self._llg_tokenizer: Any = None
        self._byte_tokenizer: Any = None
        self._token_of: dict[bytes, int] | None = None
        self.grammar = lru_cache(maxsize=256)(self._grammar)

    @property
    def llg_tokenizer(self) -> Any:
        # Built on first use: seconds for a 262K vocabulary, so unconstrained serving never pays it.
        if self._llg_tokenizer is None:
            import llguidance.hf

            self._llg_tokenizer = llguidance.hf.from_tokenizer(
                self.hf_tokenizer, n_vocab=self.vocab_size, eos_token=self.eos_ids
            )
        return self._llg_tokenizer

    @property
    def token_of(self) -> dict[bytes, int]:
        """Each ordinary token's bytes to its id (the lowest id when two spell the same): 0.3 s once."""
        if self._token_of is None:
            llg = self.llg_tokenizer
            found: dict[bytes, int] = {}
            for i in range(min(llg.vocab_size, self.vocab_size)):
                if not llg.is_special_token(i):
                    found.setdefault(llg.decode_bytes([i]), i)
            found.pop(b"", None)
            self._token_of = found
        return self._token_of

    def _grammar(self, schema_json: str) -> tuple[str, int]:
        """The schema's grammar, and the closing margin its rows use."""
        import llguidance

        try:
            schema = _Bounds(*self.bounds).apply(json.loads(schema_json))
            matcher = llguidance.LLMatcher
            grammar = matcher.grammar_from_json_schema(json.dumps(schema), overrides=_OVERRIDES)
            failed, messages = matcher.validate_grammar_with_warnings(grammar, self.llg_tokenizer)
            margin = 0 if failed else min(max(self.closing_margin, _opening_bound(schema)), _MAX_MARGIN)
        except (ValueError, TypeError, AttributeError) as e:  # not JSON, or a keyword of the wrong type
            failed, messages, margin = True, [str(e)], 0
        bytewise = None if failed else self.matcher(grammar, bytewise=True)
        if (
            bytewise
            and not _closings(bytewise, _MAX_VALUE_CHARS)
            and not _closings(bytewise, _MAX_VALUE_CHARS, None)
        ):
            failed = True
            messages = [f"no JSON value of at most {_MAX_VALUE_CHARS} characters satisfies it (a $ref loop?)"]
        if failed:  # one line: llguidance's regex errors span several
            reason = " ".join((messages[0] if messages else "not a schema pacos can enforce").split())
            raise PacosError(f"json schema: {reason}")
        return grammar, margin

    def matcher(self, grammar: str, bytewise: bool = False) -> Any:
        import llguidance

        if bytewise and self._byte_tokenizer is None:
            self._byte_tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteVocabulary()))
        matcher = llguidance.LLMatcher(self._byte_tokenizer if bytewise else self.llg_tokenizer, grammar)
        if matcher.is_error():
            raise PacosError(f"json schema: {' '.join(matcher.get_error().split())}")
        return matcher

    def check(self, schema: dict[str, Any]) -> None:
        """A one-line PacosError naming what cannot be enforced; nothing when the schema is usable."""
        self.grammar(json.dumps(schema))

    def constraint(self, schema: dict[str, Any]) -> RowConstraint:
        grammar, margin = self.grammar(json.dumps(schema))
        return RowConstraint(self.matcher(grammar), self.matcher(grammar, bytewise=True), self, margin)


def _closings(matcher: Any, limit: int, width: int | None = _SEARCH_WIDTH) -> tuple[int, list[bytes]] | None:
    """The fewest bytes (at most `limit`) that complete a valid value from a bytewise matcher's state,
    and some endings that long; None when none is found. A uniform-cost search, expanding `width` states
    per cost and the first few of many choices (free text); `width=None`: every state and choice, so None
    proves there is no such value ((limit + 1, []) if it gave up after `_MAX_EXPANDED` states)."""
    heap: list[tuple[int, int, bytes, Any, bytes]] = [(0, 0, b"", matcher, b"")]
    expanded: dict[int, int] = {}
    seen: set[tuple[int, bytes]] = set()
    best, endings, order = None, [], 1
    while heap and len(seen) < _MAX_EXPANDED:
        cost, _, ending, parent, step = heapq.heappop(heap)
        if best is not None and (cost > best or len(endings) >= (width or 1)):
            break
        if width and expanded.get(cost, 0) >= width:
            continue
        node = parent.deep_copy() if step else parent  # copied only when reached: most never are
        if step and not node.consume_tokens(list(step)):
            continue
        if node.is_accepting():
            best = cost
            endings.append(ending)
            continue
        forced = node.compute_ff_bytes()
        # Two states of one cost with the same forced bytes or mask are taken as the same (`"a":1,` and
        # `"a":2,`): the width goes to different ones. Not across costs: a partial UTF-8 character
        # allows the same bytes whether it needs one more or two.
        key = (cost, forced or node.compute_bitmask())
        if key in seen:
            continue
        seen.add(key)
        expanded[cost] = expanded.get(cost, 0) + 1
        if forced:  # no choice: one move, however long
            if cost + len(forced) <= limit:
                heapq.heappush(heap, (cost + len(forced), order, ending + forced, node, forced))
                order += 1
            continue
        if cost >= limit:
            continue
        mask = key[1][:32]  # bits 0-255: the bytes; 256 is EOS
        choices = sorted((8 * i + j for i, m in enumerate(mask) if m for j in _SET_BITS[m]), key=_RANK.get)
        if width and len(choices) >= 128:  # free text: any character leads to the same state
            choices = choices[:3]
        elif width and len(choices) > 2 * width:  # a format's text: a few, and punctuation (`@`)
            choices = choices[:width] + [b for b in choices[width:] if b in _PUNCTUATION]
        elif width and set(choices) >= _DIGITS:  # a number: 2-9 lead where 1 does (a date's `Z` stays)
            choices = [b for b in choices if b not in _DIGITS]
        for b in choices:
            heapq.heappush(heap, (cost + 1, order, ending + bytes([b]), node, bytes([b])))
            order += 1
    if best is None and heap and width is None:
        return limit + 1, []
    return None if best is None else (best, endings)


_BITS = torch.arange(32, dtype=torch.int32)


class RowConstraint:
    """One row's position in its grammar: which tokens may come next, and whether the JSON is complete."""

    def __init__(self, matcher: Any, bytewise: Any, grammars: JsonGrammars, margin: int) -> None:
        self.matcher = matcher
        self.bytewise = bytewise  # the same grammar and position over `_ByteVocabulary`, for the search
        self.grammars = grammars
        self.vocab_size = grammars.vocab_size
        self.margin = margin  # the most one token can add to the shortest ending
        self.forced = False  # the budget forced the closing: the engine reports "length"
        self._search_at: int | None = None  # the tokens_left at which to search again; None: now
        self._endings: list[bytes] = []  # once forced: the shortest endings, less what was written since

    def allowed(self, tokens_left: int | None = None) -> torch.Tensor:
        """A [vocab] bool mask of the tokens that keep the answer valid (only EOS once it is complete).
        With `tokens_left` (what max_tokens and the context still allow), near the end of the budget
        only tokens on a shortest valid ending."""
        free = self._free()
        if tokens_left is None:
            return free
        if not self.forced and self._search_at is not None and tokens_left > self._search_at:
            return free
        if not self._endings:
            # Bytes, not tokens: a model's token can spell several. The narrow search can miss a rare
            # way out (a format's `@`); the full one is slower.
            limit = tokens_left + 64
            found = _closings(self.bytewise, limit) or _closings(self.bytewise, limit, None)
            if not found or not found[1]:  # no ending fits: the budget is too small, stop searching
                self._search_at = -1
                return free
            need, endings = found
            if not self.forced and tokens_left > need + self.margin:
                # Each token adds at most `margin` to the ending: no need to look again before this.
                self._search_at = (self.margin * tokens_left + need + self.margin) // (self.margin + 1)
                return free
            self.forced, self._endings = True, endings
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        token_of = self.grammars.token_of
        for ending in self._endings:
            for k in range(1, len(ending) + 1):  # any token spelling a start of the ending
                if (token := token_of.get(ending[:k])) is not None:
                    mask[token] = True
        if not self._endings[0]:
            mask[[i for i in self.grammars.eos_ids if i < self.vocab_size]] = True
        mask &= free
        return mask if mask.any() else free

    def _free(self) -> torch.Tensor:
        words = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.int32)
        return ((words[:, None] >> _BITS) & 1).bool().flatten()[: self.vocab_size]

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            error = self.matcher.get_error()
            raise PacosError(f"constrained decoding: token {token} broke the grammar ({error})")
        spelled = self.grammars.llg_tokenizer.decode_bytes([token])
        self.bytewise.consume_tokens(list(spelled))
        # The rest of a shortest ending is a shortest ending: no new search while the row follows one.
        self._endings = [e[len(spelled) :] for e in self._endings if e.startswith(spelled)]

    @property
    def complete(self) -> bool:
        """The JSON value is finished: nothing but EOS may follow (or, once forced, nothing needs to)."""
        return self.matcher.is_stopped() or (self.forced and self.matcher.is_accepting())
