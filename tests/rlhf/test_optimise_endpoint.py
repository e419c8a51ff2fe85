"""The real endpoint process (`python -m serving`) serves optimised bases: one endpoint per base.

A quantised base with its re-recorded adapters answers exactly what the in-process runner answers on the
same variant (greedy); an adapter recorded against the fp32 base is refused on it (lineage is checked);
a distilled student serves its subject with no adapter.
"""

from __future__ import annotations

import secrets

import pytest

from rlhf import SUBJECTS
from rlhf.chat import build_prompt
from rlhf.models import load_base
from rlhf.optimise.distil import DistilConfig, distil
from rlhf.optimise.quantise import QuantiseConfig, quantise
from serving.client import EndpointError
from tests.fixtures.endpoint import start_endpoint
from tests.rlhf.optimise_runner import greedy, runner_with_adapters

pytestmark = pytest.mark.ml
QUESTION = [{"role": "user", "content": "What is 7 + 5?"}]


def test_endpoint_serves_the_quantised_base_with_fp32_adapters(tiny_base_path, tiny_adapters, tmp_path):
    q = quantise(tiny_base_path, tmp_path / "base-int8", QuantiseConfig(), adapters=tiny_adapters,
                 adapters_out=tmp_path / "adapters")
    model, tok = load_base(q["base"], device="cpu")
    run = runner_with_adapters(model, [q["adapters"][s] for s in SUBJECTS])
    with start_endpoint(q["base"], tmp_path / "adapters", tmp_path / "var",
                        admin_token=secrets.token_urlsafe(16)) as server:
        client = server.client()
        for i, subject in enumerate(SUBJECTS, start=1):
            out = client.generate(messages=QUESTION, subject=subject, max_new_tokens=12, temperature=0)["outputs"][0]
            assert out["adapter"] == {"subject": subject, "version": 1}
            ids = tok(build_prompt(tok, subject, QUESTION), add_special_tokens=False)["input_ids"]
            expected = greedy(run, [ids], [i], 12, tok.eos_token_id)[0]
            assert out["text"] == tok.decode(expected, skip_special_tokens=True)
        with pytest.raises(EndpointError) as err:  # the fp32 base's adapter is not this base's
            client.load_adapter("history", 2, tiny_adapters["history"])
        assert err.value.status == 422


def test_endpoint_serves_a_distilled_student_as_its_own_base(tiny_base_path, tiny_adapters, tmp_path):
    d = distil(tiny_base_path, tiny_adapters["mathematics"], tmp_path / "student",
               DistilConfig(steps=2, examples=16, heldout_examples=8))
    (tmp_path / "adapters").mkdir()
    with start_endpoint(d["path"], tmp_path / "adapters", tmp_path / "var",
                        admin_token=secrets.token_urlsafe(16)) as server:
        out = server.client().generate(messages=QUESTION, subject="mathematics", max_new_tokens=8,
                                       temperature=0)["outputs"][0]
        assert out["adapter"]["version"] is None and out["tokens"] > 0
