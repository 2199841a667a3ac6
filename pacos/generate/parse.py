"""Turn a teacher's list of tasks into candidate records, surviving what real models write.

Handles Alpaca's block format (`N. Instruction:` / `N. Input:` / `N. Output:`, `###` between items),
chat-style markdown (`**Instruction:**`, `### Task 3`, `- Input:`, code fences around the whole answer),
`Instruction 3:`, missing numbers, Chinese labels with full-width colons, and a cut-off last item. A
block without an instruction and an output is reported as incomplete, never guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pacos.generate.prompts import NO_INPUT

# Only the words the prompt uses (and "Response"): synonyms such as "Answer:" appear inside outputs too.
_LABEL_WORDS = {
    "instruction": "instruction|指令",
    "input": "input|输入",
    "output": "output|response|输出|回答",
}
_KIND_OF = {w: kind for kind, words in _LABEL_WORDS.items() for w in words.split("|")}
_MARK = r"(?:\*\*|__|\*|_)?"
# A label line: optional bullet/heading/quote marks, an optional number before or after the label word,
# optional bold, a colon (ASCII or full width); the rest of the line is the field's first line.
_LABEL = re.compile(
    rf"^[ \t>#*\-]*{_MARK}[ \t]*(?:(\d{{1,3}})[ \t]*[.)、．]?[ \t]*)?{_MARK}[ \t]*"
    rf"({'|'.join(_KIND_OF)})[ \t]*(?:#?[ \t]*(\d{{1,3}}))?[ \t]*{_MARK}[ \t]*[:：][ \t]*{_MARK}[ \t]*(.*)$",
    re.IGNORECASE,
)
# A numbered heading that starts a new item without a label ("### Task 4", "**5.**", "6. Write a haiku").
_HEADING = re.compile(
    r"^[ \t#*]*(?:(?:task|item|example|任务|例子)[ \t]*(\d{1,3})[ \t]*[.):：、．]?"
    r"|(\d{1,3})[ \t]*[.):：、．])"
    r"[ \t]*\**[ \t]*(.*)$",
    re.IGNORECASE,
)
_SEPARATOR = re.compile(r"^[ \t]*(?:#{2,}|-{3,}|\*{3,}|={3,}|_{3,})[ \t]*$")
_FENCE = re.compile(r"^[ \t]*```[\w+-]*[ \t]*$")
_NO_INPUT = {"<noinput>", "noinput", "<no input>", "no input", "none", "n/a", "<none>", "无", "<无输入>",
             "无输入"}  # fmt: skip


@dataclass
class Candidate:
    instruction: str
    input: str
    output: str
    number: int | None = None  # the item's number in the list, when the teacher wrote one


@dataclass
class Block:
    number: int | None = None
    fields: dict[str, list[str]] = field(default_factory=dict)
    current: str | None = None
    from_heading: bool = False  # its instruction came from a heading line, which a label may replace

    def text(self, kind: str) -> str | None:
        if kind not in self.fields:
            return None
        return _clean_field("\n".join(self.fields[kind]))


@dataclass
class Parsed:
    candidates: list[Candidate]
    incomplete: list[str]  # what each unusable block started with, for the rejected file
    truncated: str | None = None  # the start of the last item of a completion cut off by the token limit


def _clean_field(text: str) -> str:
    text = text.strip()
    text = re.sub(r"^(?:\*\*|__)(.*?)(?:\*\*|__)$", r"\1", text, flags=re.DOTALL).strip()
    # A trailing separator, or the next item's bare number ("6.") that began before its label did.
    text = re.sub(r"(?:\n[ \t]*(?:#{2,}|-{3,}|#?[ \t]*\d{1,3}[.)])[ \t]*)+$", "", text).strip()
    return text


def _strip_outer_fence(text: str) -> str:
    """A chat model sometimes wraps the whole list in one code fence; fences inside outputs stay."""
    lines = text.strip().splitlines()
    if len(lines) >= 2 and _FENCE.match(lines[0]) and lines[-1].strip() == "```":
        inner = lines[1:-1]
        if not any(_FENCE.match(line) for line in inner):
            return "\n".join(inner)
    return text


def parse_tasks(text: str, truncated: bool = False) -> Parsed:
    """Candidates in list order; `truncated` (finish_reason "length") sets the last item aside."""
    blocks: list[Block] = []
    block: Block | None = None

    def new_block(number: str | None) -> Block:
        blocks.append(Block(int(number) if number else None))
        return blocks[-1]

    in_fence = False
    for line in _strip_outer_fence(text).splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
        if in_fence or _FENCE.match(line):  # code inside a field: kept as it is
            if block is not None and block.current:
                block.fields[block.current].append(line)
            continue
        label = _LABEL.match(line)
        if label:
            kind, number = _KIND_OF[label.group(2).lower()], label.group(1) or label.group(3)
            heading_only = block is not None and block.from_heading and set(block.fields) <= {"instruction"}
            same_item = block is not None and number is not None and block.number == int(number)
            if kind == "instruction" and heading_only:
                block.fields.pop("instruction", None)  # "### Task 4: Title" then "Instruction: ..."
            elif block is not None and kind in block.fields and kind != "instruction" and same_item:
                block.fields.pop(kind)  # "6. Input:" written twice: the teacher's last word counts
            elif block is None or kind in block.fields or (kind == "instruction" and block.fields):
                block = new_block(number)  # a repeated label starts the next item, instruction or not
            assert block is not None
            block.from_heading = False
            block.fields.setdefault(kind, [])
            block.current = kind
            if label.group(4).strip():
                block.fields[kind].append(label.group(4))
            continue
        if _SEPARATOR.match(line):
            if block is not None and block.fields:
                block = None
            continue
        heading = _HEADING.match(line)
        number = int(heading.group(1) or heading.group(2)) if heading else None
        last_number = next((b.number for b in reversed(blocks) if b.number is not None), None)
        # A numbered line starts an item only where the list's next item belongs: after a finished item (or
        # first), with the next number. Numbered lines inside an output (steps 1, 2, 3) stay in the output.
        if heading and (
            (block is None and (last_number is None or number == last_number + 1))
            or (block is not None and "output" in block.fields and number == (last_number or 0) + 1)
        ):  # fmt: skip
            block = new_block(heading.group(1) or heading.group(2))
            rest = heading.group(3).strip().strip("*").strip()
            if rest:
                block.fields["instruction"] = [rest]
                block.current = "instruction"
            block.from_heading = True
            continue
        if block is not None and block.current:
            block.fields[block.current].append(line)
    return _candidates(blocks, truncated)


def _candidates(blocks: list[Block], truncated: bool) -> Parsed:
    parsed = Parsed([], [])
    usable = [b for b in blocks if b.fields]
    for i, block in enumerate(usable):
        instruction, output = block.text("instruction"), block.text("output")
        task_input = block.text("input") or ""
        if task_input.strip().strip(".。").casefold() in _NO_INPUT or task_input == NO_INPUT:
            task_input = ""
        start = (instruction or task_input or output or "").strip().splitlines()
        start_text = start[0][:200] if start else "(empty block)"
        if truncated and i == len(usable) - 1:
            parsed.truncated = start_text  # Alpaca drops it: the output may be cut mid-sentence
        elif not instruction or not output:
            parsed.incomplete.append(start_text)
        else:
            parsed.candidates.append(Candidate(instruction, task_input, output, block.number))
    return parsed
