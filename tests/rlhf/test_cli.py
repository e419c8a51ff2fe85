"""`python -m rlhf` as a real subprocess: ensure (cache hit + v1 adapters), eval, verify."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from rlhf import SUBJECTS
from rlhf.cli import main
from rlhf.manifest import verify
from rlhf.paths import REPO_ROOT

pytestmark = pytest.mark.ml


def _run(args, var_dir, timeout=300):
    env = {**os.environ, "TUTOR_VAR_DIR": str(var_dir), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "rlhf", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_ensure_eval_and_verify_from_the_command_line(tiny_base_path, tmp_path, monkeypatch, capsys):
    var = tmp_path / "var"
    shutil.copytree(tiny_base_path, var / "models" / "base" / tiny_base_path.name)  # so the build is a cache hit

    done = _run(["demo-model", "ensure", "--recipe", "tiny", "--steps", "1"], var)
    assert done.returncode == 0, done.stderr[-2000:]
    for subject in SUBJECTS:
        m = verify(var / "models" / "adapters" / subject / "v1")
        assert (m["subject"], m["version"]) == (subject, 1)

    # the rest in-process (same code path, no interpreter start-up on a busy CPU)
    monkeypatch.setenv("TUTOR_VAR_DIR", str(var))
    assert main(["demo-model", "ensure", "--recipe", "tiny"]) == 0
    assert capsys.readouterr().out.count("(present)") == len(SUBJECTS)
    assert main(["demo-model", "eval", "--base", "demo:tiny", "--n", "2", "--subject", "history",
                 "--adapter", f"history={var / 'models' / 'adapters' / 'history' / 'v1'}"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"history"} and result["history"]["n"] == 2
    assert main(["demo-model", "eval", "--base", "demo:tiny", "--n", "2", "--subject", "history",
                 "--temperature", "1.0"]) == 0  # plus the well-formed share of sampled replies
    out = capsys.readouterr().out
    assert "well-formed at T=1" in out and 0.0 <= json.loads(out.splitlines()[-1])["history"]["well_formed"] <= 1.0
    with pytest.raises(SystemExit, match="--temperature must be in"):
        main(["demo-model", "eval", "--base", "demo:tiny", "--temperature", "0"])

    # adapters of another build of the base: refused up front, with the fix (the endpoint would answer 422)
    manifest_path = var / "models" / "adapters" / "language" / "v1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "base_model_sha256": "0" * 64}))
    assert main(["demo-model", "ensure", "--recipe", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "language" in err and "another build of the base model" in err and "TUTOR_MODELS_DIR" in err
    manifest_path.write_text(json.dumps(manifest))

    adapter = var / "models" / "adapters" / "mathematics" / "v1"
    ok = _run(["verify", str(adapter)], var)
    assert ok.returncode == 0 and ok.stdout.startswith("OK adapter")
    (adapter / "adapter_config.json").write_text("{}")
    bad = _run(["verify", str(adapter)], var)
    assert bad.returncode == 1 and "adapter_config.json" in bad.stderr

    with pytest.raises(SystemExit) as exc:
        main(["sft", "--subject", "physics"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
