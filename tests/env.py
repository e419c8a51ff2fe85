"""Early pytest plugin (``-p tests.env``): isolate the test run's var/ before Django loads.

Tests get their own var dir (database file, filesystem broker, endpoint token), so they never
touch a running `make demo`. Model fixtures cache under var/test-cache/ across runs.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TUTOR_VAR_DIR", str(ROOT / "var" / "test"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HEALTHZ_CHECK_ENDPOINT", "false")
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright runs an event loop in the test thread
# pipelines in tests train their reward model on the tiny base, in seconds (the product's default is the MiniLM
# encoder; tests/rlhf/test_reward_encoder.py trains it, tests/training/test_per_subject.py checks the default)
os.environ.setdefault("TRAINING_REWARD_BACKBONE", "demo")
