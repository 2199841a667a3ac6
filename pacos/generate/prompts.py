"""The generation prompts, in our own words, in English and Chinese.

Alpaca mode shows a few seed tasks as the start of a numbered list in the block format that Alpaca-style
data uses (`N. Instruction:` / `N. Input:` / `N. Output:`, items separated by `###`) and asks for the
rest of the list. A completions teacher (a base model) gets the text ending in the next item's label
and simply continues it; a chat teacher gets the same text as a request and answers with the list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NO_INPUT = "<noinput>"


@dataclass(frozen=True)
class Labels:
    instruction: str
    input: str
    output: str


LABELS = {"en": Labels("Instruction", "Input", "Output"), "zh": Labels("指令", "输入", "输出")}
COLON = {"en": ": ", "zh": "："}

_INTRO = {
    "en": (
        "We are collecting a varied set of tasks to teach an AI assistant to follow instructions. "
        "Write {total} tasks in the numbered list below; the first {shown} are done.\n\n"
        "Guidelines:\n"
        "- Vary the tasks: questions, rewriting, classification, brainstorming, extraction, summaries, "
        "math, code, planning, advice, creative writing. Do not reuse the same leading verb.\n"
        "- Vary the phrasing too: some instructions are questions, others are commands; one or two "
        "sentences each, in English.\n"
        "- A text-only assistant must be able to do every task: nothing that needs pictures, sound, files, "
        "the internet or actions in the world.\n"
        "- Some tasks need an input: a concrete, realistic example (a sentence, a paragraph, a list, a piece "
        "of code) of at most 100 words. When a task needs none, its input is {no_input}.\n"
        "- The output is a correct and complete answer, preferably under 100 words.\n"
        "- Every task has three labelled parts, Instruction, Input and Output, numbered as below, and a line "
        "with ### separates the tasks.\n\n"
        "List of {total} tasks:\n"
    ),
    "zh": (
        "我们正在收集各种各样的任务，用来教一个 AI 助手听从指令。请写出下面编号列表中的 {total} 个任务，"
        "前 {shown} 个已经写好。\n\n"
        "要求：\n"
        "- 任务类型要多样：问答、改写、分类、头脑风暴、信息抽取、摘要、数学、编程、计划、建议、创意写作等，"
        "不要重复使用相同的开头动词。\n"
        "- 表述方式也要多样：有的是问句，有的是祈使句；每条指令一到两句话，用中文书写。\n"
        "- 每个任务都必须是纯文本助手能完成的：不要需要图片、声音、文件、网络或现实世界行动的任务。\n"
        "- 有些任务需要输入：一个具体、真实的例子（一句话、一段文字、一个列表、一段代码），不超过 150 字。"
        "不需要输入时，输入写 {no_input}。\n"
        "- 输出是正确、完整的回答，最好不超过 150 字。\n"
        "- 每个任务包含指令、输入、输出三个带标签的部分，按下面的格式编号，任务之间用一行 ### 分隔。\n\n"
        "{total} 个任务的列表：\n"
    ),
}

_CHAT_TAIL = {
    "en": "\nContinue the list: write tasks {next} to {total} in exactly this format, and nothing else.",
    "zh": "\n请接着写出第 {next} 到第 {total} 个任务，严格使用上面的格式，不要写其他内容。",
}


def format_task(number: int, record: dict[str, Any], language: str) -> str:
    """One item of the list in the block format."""
    labels, colon = LABELS[language], COLON[language]
    task_input = record.get("input") or NO_INPUT
    return (
        f"{number}. {labels.instruction}{colon}{record['instruction']}\n"
        f"{number}. {labels.input}{colon.rstrip()}\n{task_input}\n"
        f"{number}. {labels.output}{colon.rstrip()}\n{record['output']}"
    )


def list_prompt(examples: list[dict[str, Any]], language: str, total: int, chat: bool) -> str:
    """The request: the guidelines, then the shown tasks; a completion prompt ends in the next label."""
    shown = len(examples)
    text = _INTRO[language].format(total=total, shown=shown, no_input=NO_INPUT)
    text += "".join(f"###\n{format_task(i + 1, r, language)}\n" for i, r in enumerate(examples))
    if chat:
        return text + "###\n" + _CHAT_TAIL[language].format(next=shown + 1, total=total)
    return text + "###\n" + continuation_prefix(shown + 1, language)


def continuation_prefix(number: int, language: str) -> str:
    """What a completion prompt ends with; the parser puts it back in front of the completion."""
    return f"{number}. {LABELS[language].instruction}{COLON[language].rstrip()}"


def stop_strings(total: int) -> list[str]:
    """Stop once the teacher starts the item past the end of the list."""
    return [f"\n{total + 1}.", f"{total + 1}. "]
