"""Self-Instruct mode (Wang et al., 2022): the original four steps, with our own prompt wording.

1. Instructions: the teacher continues a list of 8 task instructions (6 human-written seeds and 2 of
   its own earlier ones, once there are any); new ones pass the instruction filters and the novelty filter.
2. Classification: a few-shot question, answered Yes or No, decides whether a task picks one label from a
   fixed set.
3. Instances: output-first for classification tasks (a class label, then an input that has it, so labels
   stay balanced), input-first otherwise; few-shot examples come from the seed tasks' own instances.
4. Filters: an output that repeats its input, an empty output, one input with different outputs, and
   every `pacos generate` filter on the finished record.
Each instance becomes one record, so `num` counts instances.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from typing import Any

from pacos.generate.generator import Generator
from pacos.generate.modes import Mode
from pacos.llm.client import Request
from pacos.text.rouge import NoveltyVerdict

HUMAN_EXAMPLES, MACHINE_EXAMPLES = 6, 2
WORDS = {
    "en": {
        "intro": "Come up with a series of new tasks for an AI assistant, each unlike the ones before:",
        "task": "Task",
        "classify": "Can the task be answered by picking one label from a fixed, finite set? Yes or No.",
        "is_class": "Classification",
        "yes": "Yes",
        "no": "No",
        "instances": "Write an example of each task: an input (or nothing, if the task needs none) and the "
        "correct output.",
        "labels": "Write examples of each classification task: first a class label, then an input that has "
        "that label.",
        "input": "Input",
        "output": "Output",
        "label": "Class label",
    },
    "zh": {
        "intro": "请想出一系列新的任务交给 AI 助手，每个任务都要和前面的不同：",
        "task": "任务",
        "classify": "这个任务能否通过从一组固定、有限的标签中选出一个来回答？回答“是”或“否”。",
        "is_class": "分类",
        "yes": "是",
        "no": "否",
        "instances": "为每个任务写一个例子：输入（任务不需要输入时留空）和正确的输出。",
        "labels": "为每个分类任务写例子：先写类别标签，再写一个属于该标签的输入。",
        "input": "输入",
        "output": "输出",
        "label": "类别标签",
    },
}


def _colon(language: str) -> str:
    return "：" if language == "zh" else ":"


def instruction_prompt(instructions: list[str], language: str) -> str:
    w, c = WORDS[language], _colon(language)
    lines = [w["intro"]] + [f"{w['task']} {i}{c} {text}" for i, text in enumerate(instructions, start=1)]
    return "\n".join(lines) + f"\n{w['task']} {len(instructions) + 1}{c}"


def parse_instructions(text: str, language: str) -> list[str]:
    """The continuation of `instruction_prompt`: the first line, then `Task N:` lines."""
    task = re.escape(WORDS[language]["task"])
    found = []
    for i, line in enumerate(text.splitlines()):
        m = re.match(rf"^\s*(?:{task}\s*\d+\s*[:：.]|\d+\s*[.)])\s*(.*)$", line, re.IGNORECASE)
        value = m.group(1) if m else (line if i == 0 else "")
        if value.strip():
            found.append(value.strip())
    return found


def classification_prompt(examples: list[dict[str, Any]], instruction: str, language: str) -> str:
    w, c = WORDS[language], _colon(language)
    shots = [
        f"{w['task']}{c} {e['instruction']}\n{w['is_class']}{c} "
        f"{w['yes'] if e.get('metadata', {}).get('is_classification') else w['no']}"
        for e in examples
    ]
    return (
        f"{w['classify']}\n\n" + "\n\n".join(shots) + f"\n\n{w['task']}{c} {instruction}\n{w['is_class']}{c}"
    )


def instance_prompt(
    examples: list[dict[str, Any]], instruction: str, classification: bool, language: str
) -> str:
    w, c = WORDS[language], _colon(language)

    def shot(e: dict[str, Any]) -> str:
        if classification:
            return f"{w['label']}{c} {e['output']}\n{w['input']}{c} {e.get('input') or ''}".rstrip()
        return f"{w['input']}{c} {e.get('input') or ''}\n{w['output']}{c} {e['output']}"

    blocks = [f"{w['task']}{c} {e['instruction']}\n{shot(e)}" for e in examples]
    header = w["labels"] if classification else w["instances"]
    return f"{header}\n\n" + "\n\n".join(blocks) + f"\n\n{w['task']}{c} {instruction}\n"


def parse_instances(text: str, classification: bool, language: str) -> list[tuple[str, str]]:
    """(input, output) pairs from a continuation; it ends where the next `Task:` begins."""
    w = WORDS[language]
    text = re.split(rf"(?m)^\s*{re.escape(w['task'])}\s*[:：]", text)[0]
    inputs = {w["input"].lower(), "input"}
    words = "|".join(
        re.escape(x) for x in (w["input"], "input", w["output"], "output", w["label"], "class label")
    )
    matches = list(re.finditer(rf"(?mi)^[ \t]*({words})[ \t]*\d*[ \t]*[:：]", text))
    pairs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for m, following in zip(matches, [*matches[1:], None]):
        kind = "input" if m.group(1).lower() in inputs else "output"  # a class label is the output
        if kind in current:  # a second input or output: the next instance starts
            pairs.append(current)
            current = {}
        current[kind] = text[m.end() : following.start() if following else len(text)].strip()
        if "output" in current and ("input" in current or not classification):
            pairs.append(current)
            current = {}
    if current:
        pairs.append(current)
    return [(p.get("input", ""), p["output"]) for p in pairs if "output" in p]


def _seed_examples(generator: Generator, rng: random.Random, classification: bool, k: int) -> list[dict]:
    pool = [
        s for s in generator.seeds if bool(s.get("metadata", {}).get("is_classification")) == classification
    ]
    return rng.sample(pool, min(k, len(pool))) if pool else rng.sample(generator.seeds, k)


async def self_instruct_round(generator: Generator) -> bool:
    """One round of the four steps; False when every request failed."""
    g, c = generator, generator.config
    lang, tally = c.language, generator.tally
    count = c.requests_per_round or generator.teacher.batch_size
    if c.max_requests is not None:  # checked between rounds; a round's later steps may pass it a little
        count = max(1, min(count, c.max_requests - tally.requests))
    requests, metas = [], []
    for i in range(count):
        number = tally.requests + i
        rng = random.Random(f"{c.seed}-{number}")
        human = rng.sample(g.seeds, min(HUMAN_EXAMPLES, len(g.seeds)))
        machine = rng.sample(tally.accepted, min(MACHINE_EXAMPLES, len(tally.accepted)))
        shown = [s["instruction"] for s in human] + list(dict.fromkeys(m["instruction"] for m in machine))
        requests.append(
            Request(
                id=f"req-{number:06d}",
                prompt=instruction_prompt(shown, lang),
                max_tokens=min(c.max_tokens, 1024),
                temperature=c.temperature,
                top_p=c.top_p,
                stop=[f"\n{WORDS[lang]['task']} 17", "\n\n"],
                seed=rng.randrange(2**31),
            )
        )
        metas.append({"step": "instructions", "seed_ids": [s.get("id") for s in human]})
    replies = await g.send(requests, metas)
    new: list[tuple[str, NoveltyVerdict, list[str]]] = []
    for reply, request, meta in zip(replies, requests, metas):
        if reply.error is not None:
            continue
        for instruction in parse_instructions(reply.text, lang):
            rule, reason = g.candidate_filter.check_instruction(instruction)
            if rule:
                g.reject({"instruction": instruction}, rule, reason or rule, request.id)
                continue
            verdict = g.novelty.offer(instruction)
            if not verdict.novel:
                twin, score = verdict.most_similar[0]
                g.reject(
                    {"instruction": instruction},
                    "not_novel",
                    f"ROUGE-L {score:.2f} with {twin!r}",
                    request.id,
                )
                continue
            new.append((instruction, verdict, meta["seed_ids"]))
    if not new:
        return any(r.error is None for r in replies)
    # Step 2: is each new task a classification task?
    rng = random.Random(f"{c.seed}-classify-{tally.requests}")
    shots = _seed_examples(g, rng, True, 3) + _seed_examples(g, rng, False, 3)
    rng.shuffle(shots)
    ask = [
        Request(
            id=f"req-{tally.requests + i:06d}",
            prompt=classification_prompt(shots, text, lang),
            max_tokens=4,
            temperature=0.0,
            top_p=1.0,
            stop=["\n"],
        )
        for i, (text, _, _) in enumerate(new)
    ]
    answers = await g.send(ask, [{"step": "classify"}] * len(ask))
    yes = WORDS[lang]["yes"].lower()
    kinds = [a.error is None and a.text.strip().lower().startswith((yes, "yes")) for a in answers]
    # Step 3: instances, output-first for classification tasks.
    prompts = []
    for i, ((text, _, _), classification) in enumerate(zip(new, kinds)):
        examples = _seed_examples(g, rng, classification, 3)
        prompt = instance_prompt(examples, text, classification, lang)
        prompts.append(
            Request(
                id=f"req-{tally.requests + i:06d}",
                prompt=prompt,
                max_tokens=min(c.max_tokens, 512),
                temperature=0.0,
                top_p=1.0,
                stop=[],
            )
        )
    instances = await g.send(prompts, [{"step": "instances"}] * len(prompts))
    # Step 4: filter the instances of each task, then every record.
    for (text, verdict, seed_ids), classification, reply in zip(new, kinds, instances):
        if reply.error is not None:
            continue
        pairs = parse_instances(reply.text, classification, lang)
        if pairs and not pairs[0][0].strip():  # a task without an input has one answer: later ones are drift
            pairs = pairs[:1]
        if not pairs:
            g.reject({"instruction": text}, "incomplete", "no instance could be read", reply.request_id)
            continue
        outputs: dict[str, set[str]] = defaultdict(set)
        for task_input, output in pairs:
            outputs[task_input.strip()].add(output.strip())
        seen = set()
        for task_input, output in pairs:
            record = {"instruction": text, "input": task_input, "output": output}
            if len(outputs[task_input.strip()]) > 1:
                g.reject(
                    record, "conflicting_outputs", "the same input with different outputs", reply.request_id
                )
                continue
            if (task_input, output) in seen:
                continue
            seen.add((task_input, output))
            g.admit(record, reply, seed_ids, {"is_classification": classification}, verdict)
    return any(r.error is None for r in replies)


MODE = Mode(name="self-instruct", round=self_instruct_round)
