"""Constrained decoding (`json_schema` in SamplingParams): every answer parses and validates, sampled or
greedy, alone or batched with unconstrained rows, and whenever its token budget holds the shortest valid
value; a schema keyword that cannot be enforced, or a schema no finite value satisfies, is a one-line
error naming it."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from pacos.errors import PacosError
from pacos.infer import TorchEngine
from pacos.infer.constrain import ANY_OBJECT, JsonGrammars, RowConstraint
from pacos.infer.sampling import SamplingParams

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "mood": {"enum": ["happy", "sad", "calm"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "home": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "floor": {"type": "integer", "minimum": 0, "maximum": 99},
            },
            "required": ["city", "floor"],
            "additionalProperties": False,
        },
        "pet": {"type": "boolean"},
    },
    "required": ["name", "mood", "tags", "home", "pet"],
    "additionalProperties": False,
}


def violations(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """What in `value` breaks `schema` (the keywords used above)."""
    if "enum" in schema:
        return [] if value in schema["enum"] else [f"{where}: {value!r} not in enum"]
    kind = schema.get("type")
    checks = {"object": dict, "array": list, "string": str, "boolean": bool}
    if kind in ("integer", "number"):
        ok = isinstance(value, int if kind == "integer" else (int, float)) and not isinstance(value, bool)
        ok = ok and schema.get("minimum", value) <= value <= schema.get("maximum", value)
        return [] if ok else [f"{where}: {value!r} is not an integer in range"]
    if not isinstance(value, checks[kind]):
        return [f"{where}: {value!r} is not {kind}"]
    if kind == "string" and len(value) > schema.get("maxLength", len(value)):
        return [f"{where}: longer than {schema['maxLength']}"]
    if kind == "array":
        found = [] if len(value) <= schema.get("maxItems", len(value)) else [f"{where}: too many items"]
        return found + [
            v for i, item in enumerate(value) for v in violations(item, schema["items"], f"{where}[{i}]")
        ]
    if kind == "object" and "properties" in schema:
        found = [f"{where}.{k}: missing" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties") is False:
            found += [f"{where}.{k}: not allowed" for k in value if k not in schema["properties"]]
        for k, sub in schema["properties"].items():
            if k in value:
                found += violations(value[k], sub, f"{where}.{k}")
        return found
    return []


@pytest.fixture(scope="module")
def engine(tiny_llama: Path) -> TorchEngine:
    return TorchEngine.load(str(tiny_llama), dtype="float32", device="cpu")


def test_sampled_answers_of_a_random_model_all_validate(engine):
    params = [
        SamplingParams(max_new_tokens=400, temperature=1.0, seed=s, json_schema=SCHEMA) for s in range(8)
    ]
    outs = [engine.generate(["Describe a person."], p)[0] for p in params]
    for out in outs:
        assert out.finish_reason == "stop", out.text
        assert violations(json.loads(out.text), SCHEMA) == [], out.text
        assert (
            " " not in out.text.replace('" ', "").split('"')[0]
        )  # compact: no free whitespace outside strings
    assert len({o.text for o in outs}) > 1  # sampled, not one forced string


def test_constrained_and_free_rows_share_a_batch(engine):
    free = SamplingParams(max_new_tokens=20, temperature=0.0)
    alone = engine.generate(["Hello"], free)[0]
    mixed = engine.generate(
        ["Hello", "Hi", "Hey"],
        [
            free,
            SamplingParams(max_new_tokens=400, temperature=0.0, json_schema=SCHEMA),
            SamplingParams(max_new_tokens=30, temperature=0.0, json_schema=ANY_OBJECT),
        ],
    )
    assert mixed[0].text == alone.text  # the free row does not feel the others' constraints
    assert violations(json.loads(mixed[1].text), SCHEMA) == []
    # json_object: a random model may add keys until the limit; what it wrote is an object's start
    assert mixed[2].text.startswith("{") and mixed[2].text.count("{") >= mixed[2].text.count("}")


def test_unenforceable_schema_is_an_error_naming_it(engine):
    with pytest.raises(PacosError, match="uniqueItems"):
        engine.json_grammars.check({"type": "array", "items": {"type": "string"}, "uniqueItems": True})
    with pytest.raises(PacosError, match="json schema"):
        engine.json_grammars.check({"type": "strin"})


SCORE: dict[str, Any] = {
    "type": "object",
    "properties": {"score": {"type": "number"}, "why": {"type": "string"}},
    "required": ["score", "why"],
    "additionalProperties": False,
}


def random_answer(constraint: RowConstraint, budget: int, seed: int, budgeted: bool = True) -> str:
    """A decode loop whose "model" picks any allowed token: it loops in numbers and strings like a small
    sampled model, the way the engine runs a row (allowed, consume, stop when complete)."""
    rng, grammars, written = random.Random(seed), constraint.grammars, b""
    for left in range(budget, 0, -1):
        token = rng.choice(constraint.allowed(left if budgeted else None).nonzero().flatten().tolist())
        if token in grammars.eos_ids:
            break
        constraint.consume(token)
        written += grammars.llg_tokenizer.decode_bytes([token])
        if constraint.complete:
            break
    return written.decode(errors="replace")


def feed(constraint: RowConstraint, text: str, budget: int | None = None) -> None:
    """Write `text` one character (one token of the byte-level tokenizer) at a time, the budget, if any,
    shrinking as it goes."""
    for i, b in enumerate(text.encode()):
        token = constraint.grammars.token_of[bytes([b])]
        if budget is not None:
            assert constraint.allowed(budget - i)[token]
        constraint.consume(token)


def test_answers_parse_whenever_the_budget_holds_the_shortest_value(engine):
    grammars = engine.json_grammars
    shortest = len('{"score":0,"why":""}')
    budgets = [shortest, 24, 28, 32, 40]
    answers = [random_answer(grammars.constraint(SCORE), budgets[s % 5], s) for s in range(20)]
    for text in answers:
        assert violations(json.loads(text), SCORE) == [], text
    assert len(set(answers)) > 5  # the "model"'s choices where the budget leaves room for them
    # The same walks without the budget stop mid-value: the test above is not vacuous.
    unbudgeted = [random_answer(grammars.constraint(SCORE), 32, s, budgeted=False) for s in range(20)]
    assert sum(not text.endswith("}") for text in unbudgeted) >= 15


def test_forced_closing_is_flagged(engine):
    grammars = engine.json_grammars
    constraint = grammars.constraint(SCORE)
    feed(constraint, '{"score":4.00', budget=100)
    assert not constraint.forced
    allowed = constraint.allowed(12)  # `,"why":""}` is 10 characters: close now
    assert constraint.forced
    assert allowed.nonzero().flatten().tolist() == [grammars.token_of[b","]]
    assert random_answer(constraint, 12, seed=0) == ',"why":""}'
    assert constraint.complete
    calm = grammars.constraint(SCORE)  # a row that finishes well within its budget is not forced
    feed(calm, '{"score":1,"why":"ok"}', budget=100)
    assert calm.complete and not calm.forced


def test_lengths_are_bounded(engine):
    grammars = JsonGrammars(
        engine.tokenizer,
        engine.logits_width(),
        sorted(engine.eos_ids),
        max_string_chars=3,
        max_integer_digits=2,
        max_fraction_digits=1,
    )
    token = grammars.token_of
    constraint = grammars.constraint(SCORE)
    feed(constraint, '{"score":12')
    assert not constraint.allowed()[token[b"3"]] and constraint.allowed()[token[b"."]]
    feed(constraint, ".5")
    assert not constraint.allowed()[token[b"5"]] and not constraint.allowed()[token[b"e"]]
    feed(constraint, ',"why":"abc')
    assert not constraint.allowed()[token[b"d"]] and constraint.allowed()[token[b'"']]
    grammars.check({"type": "string", "minLength": 10})  # a schema's own minimum beats the default
    free = grammars.constraint({})  # free values are bounded too
    feed(free, '[{"k":"abc')
    assert not free.allowed()[token[b"d"]]


def test_empty_schema_is_any_json_value(engine):
    grammars = engine.json_grammars
    grammars.check({})
    for text in ["7", '"x"', "null", '[1,{"a":[true]}]', '{"k":-0.5}']:
        constraint = grammars.constraint({})
        feed(constraint, text)
        assert constraint.matcher.is_accepting(), text
    for seed in range(5):
        json.loads(random_answer(grammars.constraint({}), 16, seed))
        assert isinstance(json.loads(random_answer(grammars.constraint(ANY_OBJECT), 16, seed)), dict)


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {"type": "array", "items": {"$ref": "#"}, "minItems": 1},
        {
            "$defs": {"a": {"type": "object", "properties": {"b": {"$ref": "#/$defs/a"}}, "required": ["b"]}},
            "$ref": "#/$defs/a",
        },
    ],
)
def test_schema_with_no_finite_value_is_an_error(engine, schema):
    with pytest.raises(PacosError, match=r"^json schema: no JSON value .*\$ref loop") as error:
        engine.json_grammars.check(schema)
    assert "\n" not in str(error.value)


def test_regex_error_is_one_complete_line(engine):
    with pytest.raises(PacosError) as error:
        engine.json_grammars.check({"type": "string", "pattern": "(a"})
    message = str(error.value)
    assert "\n" not in message and "regex parse error" in message and "unclosed group" in message


def test_the_engine_closes_every_answer_within_a_small_budget(engine):
    """A random model samples forever inside a string or a number; at max_tokens 32 every one of 20
    answers still parses and validates, those the budget closed reported as "length"."""
    params = [
        SamplingParams(max_new_tokens=32, temperature=1.0, seed=s, json_schema=SCORE) for s in range(20)
    ]
    done = engine.generate(["Rate this:"] * 20, params)
    for c in done:
        assert violations(json.loads(c.text), SCORE) == [], c.text
        assert c.completion_tokens <= 32
    assert {c.finish_reason for c in done} <= {"stop", "length"}
    assert any(c.finish_reason == "length" for c in done)  # the budget did the closing somewhere
    free = engine.generate(["Rate this:"] * 4, [SamplingParams(max_new_tokens=32, temperature=1.0, seed=s)
                                                 for s in range(4)])  # fmt: skip
    assert all(c.finish_reason == "length" for c in free)  # unconstrained, it would not have stopped
