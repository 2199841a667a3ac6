"""Settings of `pacos generate`: YAML keys = field names (recipes/generate*.yaml), or --set KEY=VALUE."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pacos.config import known_names
from pacos.llm.config import ClientConfig

# Alpaca's whole-word blacklist: a text model cannot make or perceive these (plurals included).
DEFAULT_BLACKLIST = [
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
    "plot", "go to", "video", "audio", "music", "flowchart", "diagram", "diagrams",
]  # fmt: skip
# The same idea in Chinese, matched as substrings (Chinese has no spaces between words).
DEFAULT_BLACKLIST_ZH = [
    "图片", "图像", "照片", "画一", "绘制", "图表", "地图", "文件", "视频", "音频", "音乐", "流程图",
    "示意图", "访问网站", "打开网页",
]  # fmt: skip


# The candidate filters' rule names (pacos/generate/filters.py), for `filters.disable`.
FILTER_NAMES = (
    "too_short", "too_long_instruction", "blacklisted_word", "banned_prefix", "leading_punctuation",
    "input_is_output", "refusal", "leading_non_ascii", "wrong_language",
)  # fmt: skip


class FilterConfig(BaseModel):
    """Alpaca's candidate filters, each a named rule (disable any by name)."""

    model_config = ConfigDict(extra="forbid")

    min_words: int = Field(4, ge=0)  # Alpaca dropped <= 3 words; Chinese counts characters
    max_words: int = Field(150, ge=1)
    blacklist: list[str] | None = None  # None: the language's default list
    banned_prefixes: list[str] | None = None  # None: "Write a program" (en) / "编写一个程序" (zh)
    disable: list[str] = []

    @field_validator("disable")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        return known_names(names, FILTER_NAMES)


# Evol-Instruct's operations (pacos/generate/modes/evol.py): five in-depth rewrites and one in-breadth.
EVOL_OPERATIONS = (
    "add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input", "breadth",
)  # fmt: skip


class EvolConfig(BaseModel):
    """`--mode evol`: rounds of rewrites of a starting set; each round evolves every item of the pool."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(3, ge=1)
    operations: list[str] = list(EVOL_OPERATIONS)  # each evolution picks one of these at random
    # Failed evolutions an item may have; one more and it leaves the pool (nothing loops forever).
    max_retries: int = Field(2, ge=0)
    # "No new information": the evolved prompt has fewer words outside its longest common subsequence
    # with the parent (ROUGE-L's LCS) than this. Words, not the F1: a long prompt with one added
    # constraint keeps a high F1 although the constraint is new.
    min_new_words: int = Field(3, ge=1)
    prompt_max_tokens: int = Field(512, ge=16)  # for the evolved prompt (the answer gets max_tokens)

    @field_validator("operations")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        if not names:
            raise ValueError("at least one operation is needed")
        return known_names(names, EVOL_OPERATIONS)


class MagpieConfig(BaseModel):
    """`--mode magpie`: a chat model writes the user turn from its own template, then answers it."""

    model_config = ConfigDict(extra="forbid")

    # None: the template's own default (an empty system turn, or none); for --language zh a Chinese one,
    # so that the user turn the model writes is in Chinese.
    system_prompt: str | None = None
    instruction_max_tokens: int = Field(256, ge=8)  # an instruction that hits it is dropped as truncated
    answer_temperature: float = Field(0.0, ge=0)  # Magpie answers greedily
    # User turns per conversation: > 1 is Magpie's multi-turn mode (the model writes each follow-up).
    turns: int = Field(1, ge=1, le=8)
    # Where the chat template comes from for an http(s) teacher: a model name, directory or hub id that
    # `load_tokenizer` accepts. None: the endpoint's model name (pacos serve: the embedded name).
    tokenizer: str | None = None


# What a teacher computing on a CPU gets unless a setting says otherwise: Alpaca's lists of 20 tasks in
# up to 3,072 tokens, 8 at a time, take a 135M model on 2 cores over ten minutes for one request;
# these finish one in well under a minute (benchmarks/README.md).
CPU_TEACHER_DEFAULTS: dict[str, Any] = {
    "max_tokens": 768,
    "tasks_per_request": 8,
    "client.concurrency": 2,
    "magpie.instruction_max_tokens": 128,
}


class GenerateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # http(s)://HOST:PORT/v1 (an OpenAI-compatible server), local:NAME_OR_PATH, llama.cpp:FILE.gguf
    teacher: str | None = None
    out_dir: str | None = None  # where the run's files go (the CLI's --out)
    mode: str = "alpaca"  # a module of pacos/generate/modes/: alpaca, self-instruct, evol, magpie
    language: Literal["en", "zh"] = "en"
    seeds: str | None = None  # None: the bundled seed tasks of `language`
    num: int = Field(100, ge=1)  # accepted examples to end with
    model: str | None = None  # the name an OpenAI-compatible endpoint knows the teacher by
    # One round sends `requests_per_round` requests; each shows `prompt_examples` seed tasks and asks for a
    # list of `tasks_per_request` (Alpaca: 5 requests, 3 examples, lists of 20).
    requests_per_round: int | None = Field(None, ge=1)  # None: the teacher's (concurrency, engine batch)
    prompt_examples: int = Field(3, ge=1)
    tasks_per_request: int = Field(20, ge=2)
    max_tokens: int = Field(3072, ge=16)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    # Alpaca's novelty filter: keep only if ROUGE-L F1 <= threshold against every seed and kept instruction.
    novelty_threshold: float = Field(0.7, ge=0, le=1)
    # "rouge": rouge_score's tokenizer (exactly Alpaca's decisions; it deletes Chinese); "cjk": CJK
    # characters as tokens too. None: rouge for English, cjk for Chinese.
    novelty_tokenizer: Literal["rouge", "cjk"] | None = None
    similar_k: int = Field(5, ge=1)  # most similar instructions stored with each kept record
    filters: FilterConfig = FilterConfig()
    clean: bool = True  # `pacos data clean`'s rules (with fixes) on every candidate too
    # Evaluation sets to keep out (record files, or "ifeval"): a candidate that overlaps one of their
    # prompts (pacos data contamination's checks) is rejected as `contaminated`.
    exclude: list[str] = []
    max_requests: int | None = Field(None, ge=1)  # a safety stop for teachers that never yield enough
    budget: float | None = Field(None, gt=0)  # USD; stops cleanly when reached
    prices: str | None = None  # YAML price table; None: the built-in pacos/llm/prices.yaml
    seed: int = 0
    client: ClientConfig = ClientConfig()
    evol: EvolConfig = EvolConfig()
    magpie: MagpieConfig = MagpieConfig()

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, name: str) -> str:
        from pacos.generate.modes import mode_names

        if name not in mode_names():
            raise ValueError(f"unknown mode '{name}': choose one of {', '.join(mode_names())}")
        return name

    def for_cpu_teacher(self) -> tuple[GenerateConfig, list[str]]:
        """These settings with CPU_TEACHER_DEFAULTS where none was given; and the ones changed."""
        changed, config = [], self.model_copy(deep=True)
        for key, value in CPU_TEACHER_DEFAULTS.items():
            section, _, name = key.rpartition(".")
            owner = getattr(config, section) if section else config
            if name not in owner.model_fields_set and getattr(owner, name) != value:
                setattr(owner, name, value)
                if section in ("", "client", self.mode):  # another mode's section is not worth a word
                    changed.append(f"{key}={value}")
        if config.prompt_examples >= config.tasks_per_request:  # the user asked for more examples shown
            config.tasks_per_request = self.tasks_per_request
        return config, changed

    @model_validator(mode="after")
    def _check(self) -> GenerateConfig:
        if self.prompt_examples >= self.tasks_per_request:
            raise ValueError("prompt_examples must be smaller than tasks_per_request")
        if self.filters.min_words > self.filters.max_words:
            raise ValueError("filters.min_words must not exceed filters.max_words")
        return self

    @property
    def tokenizer(self) -> str:
        return self.novelty_tokenizer or ("cjk" if self.language == "zh" else "rouge")
