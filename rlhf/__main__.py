"""`python -m rlhf` (see rlhf/cli.py)."""

from rlhf.cli import main

raise SystemExit(main())
