"""Masking of student identities and prompt normalisation (pure functions, no Django)."""

from __future__ import annotations

import hashlib
import re
import unicodedata

EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# 7+ digits with optional separators / country code: phone-like, not years or small numbers
PHONE_RE = re.compile(r"(?<!\w)(?:\+?\d[\d\s().-]{6,}\d)(?!\w)")
EMAIL_MASK, PHONE_MASK, NAME_MASK = "[email]", "[phone]", "[name]"


def mask_pii(text: str, names: list[str] | tuple[str, ...] = ()) -> str:
    """Replace emails, phone numbers and the given names (whole words, any case) with tokens."""
    text = EMAIL_RE.sub(EMAIL_MASK, text)
    text = PHONE_RE.sub(lambda m: PHONE_MASK if sum(c.isdigit() for c in m.group()) >= 7 else m.group(), text)
    # longest names first so "Ada Lovelace" is masked before "Ada"
    for name in sorted({n.strip() for n in names if n and n.strip()}, key=len, reverse=True):
        if "@" in name:
            continue  # emails are already masked above
        text = re.sub(rf"(?<!\w){re.escape(name)}(?!\w)", NAME_MASK, text, flags=re.IGNORECASE)
    return text


def mask_context(context: list[dict], names: list[str] | tuple[str, ...] = ()) -> list[dict]:
    return [{"role": t.get("role", "user"), "content": mask_pii(str(t.get("content", "")), names)} for t in context]


def normalize(text: str) -> str:
    """Case-, whitespace- and unicode-insensitive form used for de-duplication."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"\s+", " ", text).strip()
    return text.rstrip(" ?.!")


def prompt_key(subject: str, text: str, context: list[dict] | None = None) -> str:
    """The dedup key of a prompt: subject + normalised text + normalised context."""
    h = hashlib.sha256(subject.encode())
    h.update(b"\x00" + normalize(text).encode())
    for turn in context or []:
        h.update(b"\x00" + str(turn.get("role", "")).encode() + b":" + normalize(str(turn.get("content", ""))).encode())
    return h.hexdigest()
