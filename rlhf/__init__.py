"""tutorloop's ML core: plain Python (never imports Django).

Everything the training side needs — the demo model, subject adapters, reward models, PPO,
evaluation — runs and tests without a database. See docs/rlhf.md.
"""

SUBJECTS: tuple[str, ...] = ("history", "mathematics", "language", "general_knowledge")

__all__ = ["SUBJECTS"]
