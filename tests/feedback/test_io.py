"""Import (HH-RLHF real data, TRL), export round trip, bad files change nothing."""

from __future__ import annotations

import gzip
import json

import pytest
from django.core.management import call_command

from feedback import services
from feedback.io import ImportFileError, export_trl_jsonl, parse_hh_pair
from feedback.models import ImportBatch, ImportedPair, Prompt

from .conftest import HH_FILE

pytestmark = pytest.mark.django_db
needs_hh = pytest.mark.skipif(not HH_FILE.exists(), reason=f"reference data absent: {HH_FILE} (../shared/data)")


def test_parse_hh_pair_splits_at_last_assistant_turn():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant: 4"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant: 5"
    row = parse_hh_pair(chosen, rejected)
    assert row == {"prompt": "2+2?", "context": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "hello"}],
                   "chosen": "4", "rejected": "5"}


@needs_hh
def test_import_real_hh_rlhf_and_round_trip(datasets_dir, tmp_path):
    batch = services.import_preferences(HH_FILE)
    assert batch.rows == 1500 and batch.fmt == "hh-rlhf"
    first = ImportedPair.objects.order_by("id").first()
    # spot-check row 1 (see the file): a three-turn dialogue about pranks with a pen
    assert first.prompt == "okay some of these do not have anything to do with pens"
    assert first.context[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert first.context[1]["role"] == "assistant" and len(first.context) == 4
    assert first.chosen.startswith("No, sorry!  All of these involve a pen")
    assert first.chosen != first.rejected and not first.chosen.startswith("Assistant")
    with gzip.open(HH_FILE, "rt") as fh:
        raw = [json.loads(line) for line in fh]
    for i in (0, 1254, 1499):  # line 1255 is the irregular one whose turns differ before the end
        pair = ImportedPair.objects.order_by("id")[i]
        assert raw[i]["chosen"].endswith(pair.chosen) and raw[i]["rejected"].endswith(pair.rejected)
        assert pair.prompt in raw[i]["chosen"] and pair.source == f"hh-rlhf:{HH_FILE.name}:{i + 1}"
    snap = services.create_snapshot()
    assert snap.imported_pairs == 1500 and snap.rows == 1500 and snap.test_rows > 50
    with pytest.raises(ImportFileError, match="already imported"):
        services.import_preferences(HH_FILE)
    # export → wipe → re-import → the same content hash
    out = tmp_path / "export.jsonl.gz"
    call_command("export_snapshot", snap.sha256[:10], "--out", str(out))
    ImportBatch.objects.all().delete()
    assert not ImportedPair.objects.exists()
    call_command("import_preferences", str(out))
    assert ImportBatch.objects.get().fmt == "trl"
    assert services.create_snapshot().sha256 == snap.sha256


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"})


@pytest.mark.parametrize("case, message", [
    ("bad_json_line_7", "line 7: invalid JSON"),
    ("missing_key", "line 3: missing key 'rejected'"),
    ("truncated_gzip", "truncated gzip"),
    ("no_assistant", "line 2: "),
])
def test_bad_files_name_the_line_and_import_nothing(tmp_path, case, message):
    services.add_prompt(subject="history", text="existing", source="seed")
    before = (ImportedPair.objects.count(), ImportBatch.objects.count(), Prompt.objects.count())
    if case == "bad_json_line_7":
        path = _write(tmp_path / "f.jsonl", [GOOD] * 6 + ['{"chosen": "x", "rejected": '] + [GOOD] * 3)
    elif case == "missing_key":
        path = _write(tmp_path / "f.jsonl", [GOOD, GOOD, json.dumps({"chosen": "x"})])
    elif case == "truncated_gzip":
        data = gzip.compress(("\n".join([GOOD] * 2000) + "\n").encode())
        path = tmp_path / "f.jsonl.gz"
        path.write_bytes(data[: len(data) // 2])
    else:
        path = _write(tmp_path / "f.jsonl", [GOOD, json.dumps({"chosen": "no turns", "rejected": "none"})])
    with pytest.raises(ImportFileError, match=message) as err:
        services.import_preferences(path)
    if case == "truncated_gzip":
        assert err.value.line and err.value.line > 1
    assert (ImportedPair.objects.count(), ImportBatch.objects.count(), Prompt.objects.count()) == before


def test_size_limit(tmp_path, settings):
    settings.FEEDBACK_MAX_IMPORT_BYTES = 1024
    path = _write(tmp_path / "big.jsonl", [GOOD] * 100)
    with pytest.raises(ImportFileError, match="limit"):
        services.import_preferences(path)
    assert not ImportBatch.objects.exists()


def test_trl_plain_and_conversational(tmp_path):
    path = _write(tmp_path / "trl.jsonl", [
        json.dumps({"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome", "subject": "general_knowledge"}),
        json.dumps({"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"},
                               {"role": "user", "content": "When did WW2 end?"}],
                    "chosen": [{"role": "assistant", "content": "1945"}],
                    "rejected": [{"role": "assistant", "content": "1950"}], "subject": "history", "weight": 0.5}),
    ])
    services.import_preferences(path)
    a, b = ImportedPair.objects.order_by("id")
    assert (a.prompt, a.context, a.chosen, a.rejected) == ("Capital of France?", [], "Paris", "Rome")
    assert (b.prompt, b.chosen, b.subject, b.weight) == ("When did WW2 end?", "1945", "history", 0.5)
    assert b.context == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}]


def test_prompt_import_csv_dedup_and_masking(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("subject,text\nhistory,When did Rome fall?\nhistory,  when did ROME fall  \n"
                    "mathematics,Mail me at ada@example.com or +44 20 7946 0958\n")
    batch = services.import_prompts(path)
    assert batch.rows == 2
    masked = Prompt.objects.get(subject="mathematics").text
    assert "ada@example.com" not in masked and "[email]" in masked and "[phone]" in masked
    bad = tmp_path / "bad.csv"
    bad.write_text("subject,text\nhistory,ok\nphysics,nope\n")
    with pytest.raises(ImportFileError, match="line 3"):
        services.import_prompts(bad)
    assert Prompt.objects.count() == 2


def test_export_plain_style(tmp_path, datasets_dir):
    path = _write(tmp_path / "trl.jsonl", [json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})])
    services.import_preferences(path)
    snap = services.create_snapshot()
    out = tmp_path / "plain.jsonl"
    assert export_trl_jsonl(snap.path, out, style="plain") == 1
    row = json.loads(out.read_text())
    assert (row["prompt"], row["chosen"], row["rejected"], row["weight"]) == ("p", "c", "r", 1.0)
