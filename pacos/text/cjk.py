"""The one definition of CJK text in pacos: which characters are CJK, which language a text is in, how
many words it has.

Chinese, Japanese and Korean scripts do not separate words with spaces, so each CJK character counts as
a word (and as a ROUGE token); everything else is split at whitespace and at CJK characters.
"""

from __future__ import annotations

import re

# Han ideographs (with radicals, iteration marks and the extension planes), kana and hangul.
HAN_CHARS = (
    "\u2e80-\u2fdf"  # CJK and Kangxi radicals
    "\u3005\u3007\u3021-\u3029\u3038-\u303b"  # iteration marks, ideographic zero, Hangzhou numerals
    "\u3400-\u4dbf\u4e00-\u9fff"  # CJK unified ideographs and extension A
    "\uf900-\ufaff"  # compatibility ideographs
    "\U00020000-\U000323af"  # extensions B to H and the compatibility supplement
)
CJK_CHARS = HAN_CHARS + (
    "\u1100-\u11ff"  # Hangul Jamo
    "\u3041-\u3096\u309d-\u309f"  # hiragana
    "\u30a1-\u30fa\u30fc-\u30ff"  # katakana (not the middle dot, which is punctuation)
    "\u3131-\u318e"  # Hangul compatibility Jamo
    "\u31f0-\u31ff"  # katakana phonetic extensions
    "\ua960-\ua97f\uac00-\ud7a3\ud7b0-\ud7ff"  # Hangul Jamo extensions, syllables
    "\uff66-\uff9d\uffa0-\uffdc"  # half-width katakana and hangul
)
CJK = re.compile(f"[{CJK_CHARS}]")  # one CJK character
HAN = re.compile(f"[{HAN_CHARS}]")  # one Chinese character (kanji included), no kana or hangul
# A run of non-space, non-CJK characters: a word when it holds a letter or digit ("。" or "—" is none).
_OTHER = re.compile(f"[^\\s{CJK_CHARS}]+")


def has_cjk(text: str) -> bool:
    return CJK.search(text) is not None


def language_of(text: str) -> str:
    """ "zh" for text with Chinese characters in it, else "en" (the two languages pacos ships)."""
    return "zh" if HAN.search(text) else "en"


def count_words(text: str) -> int:
    """Words: each CJK character, plus each whitespace-separated piece of other text that holds a letter
    or a digit (bare punctuation is no word)."""
    other = sum(1 for piece in _OTHER.findall(text) if any(c.isalnum() for c in piece))
    return len(CJK.findall(text)) + other
