"""The OpenAPI schema generates without warnings and validates (drf-spectacular)."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_schema_is_valid_and_warning_free(tmp_path):
    out = tmp_path / "schema.yaml"
    proc = subprocess.run([sys.executable, "manage.py", "spectacular", "--validate", "--fail-on-warn", "--file", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    schema = yaml.safe_load(out.read_text())
    paths = set(schema["paths"])
    # every area is documented
    assert {"/api/me/", "/api/conversations/", "/api/label/next/", "/api/studio/overview/"} <= paths
