"""Prompt formatting: every part of the project renders conversations through `build_prompt`.

Why one function: the policy, the reward model, the endpoint and the labeling UI must all see
the same text for the same conversation, or rewards and feedback would not match what was served.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlhf import SUBJECTS

SUBJECT_TITLES = {
    "history": "history",
    "mathematics": "mathematics",
    "language": "language (English grammar and vocabulary)",
    "general_knowledge": "general knowledge",
}

# Used when a tokenizer has no chat template (e.g. the original BLOOM checkpoints).
FALLBACK_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}System: {{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}Student: {{ m['content'] }}\n"
    "{% else %}Tutor: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Tutor:{% endif %}"
)

ROLES = ("user", "assistant")


def system_prompt(subject: str) -> str:
    """The system turn that tells the tutor which subject it teaches."""
    if subject not in SUBJECTS:
        raise ValueError(f"unknown subject {subject!r}; expected one of {', '.join(SUBJECTS)}")
    return f"You are a friendly {SUBJECT_TITLES[subject]} tutor. Subject: {subject}."


def build_messages(subject: str, messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """System turn for the subject followed by the validated user/assistant turns."""
    out = [{"role": "system", "content": system_prompt(subject)}]
    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES or not isinstance(content, str):
            raise ValueError(f"message {i} must have role in {ROLES} and string content, got {m!r}")
        out.append({"role": role, "content": content})
    return out


def build_prompt(tokenizer: Any, subject: str, messages: Sequence[dict[str, Any]]) -> str:
    """Render `messages` for `subject` with the tokenizer's chat template, ready for generation.

    When the last turn is the user's, the assistant header is appended (generation prompt);
    when it is the assistant's, the text ends with that reply (as in training data).
    """
    full = build_messages(subject, messages)
    template = getattr(tokenizer, "chat_template", None) or FALLBACK_TEMPLATE
    add_generation_prompt = full[-1]["role"] != "assistant"
    return tokenizer.apply_chat_template(
        full, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )
