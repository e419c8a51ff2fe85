"""Import and export of preference data and prompts.

Preferences: HH-RLHF (``{"chosen", "rejected"}`` whole dialogues in ``\\n\\nHuman:`` /
``\\n\\nAssistant:`` turns; the shared prefix up to the last Assistant turn is the prompt and its
context) and TRL preference files (``prompt``/``chosen``/``rejected``, plain strings or
conversational message lists; extra ``subject``/``weight``/``source`` keys are kept).
Prompts: CSV or JSONL with ``subject`` and ``text`` (or ``prompt``), optional ``context``.

A file is parsed completely before anything is written, then stored in one transaction: a bad
line means an ImportFileError naming it and nothing imported.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db import transaction

from feedback.models import SUBJECTS, ImportBatch, ImportedPair, Prompt

TURN_RE = re.compile(r"\n\n(Human|Assistant):")
ASSISTANT = "\n\nAssistant:"
DEFAULT_SUBJECT = "general_knowledge"


class ImportFileError(ValueError):
    """A file that cannot be imported; the message names the file and line."""

    def __init__(self, message: str, line: int | None = None, filename: str = ""):
        where = f"{filename}: " if filename else ""
        where += f"line {line}: " if line else ""
        super().__init__(where + message)
        self.line = line


# --------------------------------------------------------------------------------------------
# reading


def _read_bytes(source: str | Path | BinaryIO | bytes, filename: str) -> bytes:
    limit = settings.FEEDBACK_MAX_IMPORT_BYTES
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise ImportFileError(f"no such file: {path}", filename=filename)
        if path.stat().st_size > limit:
            raise ImportFileError(f"file is {path.stat().st_size} bytes; the limit is {limit} "
                                  "(FEEDBACK_MAX_IMPORT_BYTES)", filename=filename)
        data = path.read_bytes()
    else:
        data = source.read(limit + 1)
    if len(data) > limit:
        raise ImportFileError(f"file is larger than the limit of {limit} bytes (FEEDBACK_MAX_IMPORT_BYTES)",
                              filename=filename)
    return data


def _text_lines(data: bytes, filename: str) -> Iterator[tuple[int, str]]:
    """(line number, text) for a plain or gzip file; a truncated gzip names the last good line."""
    if data[:2] == b"\x1f\x8b":
        # decompress incrementally so a truncated archive reports how far it got
        decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
        max_out = settings.FEEDBACK_MAX_IMPORT_BYTES * 20  # gzip-bomb guard
        try:
            raw = decomp.decompress(data, max_out)
        except zlib.error as exc:
            raise ImportFileError(f"corrupt gzip data ({exc})", filename=filename) from None
        if decomp.unconsumed_tail:
            raise ImportFileError("decompressed file is too large", filename=filename)
        if not decomp.eof:
            complete = raw.count(b"\n")
            raise ImportFileError(f"truncated gzip file: the archive ends inside line {complete + 1} "
                                  f"(after {complete} complete lines)", line=complete + 1, filename=filename)
    else:
        raw = data
    for n, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ImportFileError(f"not UTF-8 ({exc.reason} at byte {exc.start})", line=n, filename=filename) from None
        if text.strip():
            yield n, text


def _json_lines(data: bytes, filename: str) -> Iterator[tuple[int, dict]]:
    for n, text in _text_lines(data, filename):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ImportFileError(f"invalid JSON ({exc.msg} at column {exc.colno})", line=n, filename=filename) from None
        if not isinstance(obj, dict):
            raise ImportFileError("expected a JSON object", line=n, filename=filename)
        yield n, obj


# --------------------------------------------------------------------------------------------
# preference formats


def parse_hh_dialogue(text: str) -> list[dict]:
    """``\\n\\nHuman: a\\n\\nAssistant: b`` → [{"role": "user", ...}, {"role": "assistant", ...}]."""
    parts = TURN_RE.split(text)
    turns = []
    for i in range(1, len(parts) - 1, 2):
        turns.append({"role": "user" if parts[i] == "Human" else "assistant", "content": parts[i + 1].strip()})
    return turns


def parse_hh_pair(chosen: str, rejected: str) -> dict:
    """Split an HH-RLHF pair at the last Assistant turn of the prefix both dialogues share."""
    common = 0
    limit = min(len(chosen), len(rejected))
    while common < limit and chosen[common] == rejected[common]:
        common += 1
    cut = chosen.rfind(ASSISTANT, 0, common + len(ASSISTANT))
    if cut < 0 or not chosen.startswith(ASSISTANT, cut) or not rejected.startswith(ASSISTANT, cut):
        raise ValueError("chosen and rejected do not share a prefix ending in an Assistant turn")
    turns = parse_hh_dialogue(chosen[:cut])
    if not turns or turns[-1]["role"] != "user":
        raise ValueError("the shared prefix does not end with a Human turn")
    return {"prompt": turns[-1]["content"], "context": turns[:-1],
            "chosen": chosen[cut + len(ASSISTANT):].strip(), "rejected": rejected[cut + len(ASSISTANT):].strip()}


def _reply_text(value, key: str) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return str(value[-1]["content"]).strip()
    raise ValueError(f"'{key}' must be a string or a list of {{role, content}} messages")


def parse_trl_row(obj: dict) -> dict:
    """A TRL preference row (explicit prompt; plain or conversational) → prompt/context/chosen/rejected."""
    prompt = obj["prompt"]
    if isinstance(prompt, str):
        context, text = [], prompt.strip()
    elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt):
        turns = [{"role": str(m.get("role", "user")), "content": str(m["content"])} for m in prompt]
        if turns[-1]["role"] != "user":
            raise ValueError("the last prompt message must have role 'user'")
        context, text = turns[:-1], turns[-1]["content"]
    else:
        raise ValueError("'prompt' must be a string or a non-empty list of {role, content} messages")
    return {"prompt": text, "context": context, "chosen": _reply_text(obj["chosen"], "chosen"),
            "rejected": _reply_text(obj["rejected"], "rejected")}


def _implicit_conversational(obj: dict) -> dict:
    chosen, rejected = obj["chosen"], obj["rejected"]
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return parse_trl_row({"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]})


def parse_preference_file(source, *, filename: str = "", fmt: str = "auto",
                          subject: str = DEFAULT_SUBJECT) -> tuple[list[dict], str, str]:
    """Parse a whole preference file → (rows, detected format, sha256). Raises ImportFileError."""
    if subject not in SUBJECTS:
        raise ImportFileError(f"unknown subject {subject!r}: expected one of {', '.join(SUBJECTS)}", filename=filename)
    data = _read_bytes(source, filename)
    digest = hashlib.sha256(data).hexdigest()
    rows, detected = [], None
    for n, obj in _json_lines(data, filename):
        for key in ("chosen", "rejected"):
            if key not in obj:
                raise ImportFileError(f"missing key '{key}'", line=n, filename=filename)
        kind = fmt if fmt != "auto" else ("trl" if "prompt" in obj else "hh-rlhf")
        detected = detected or kind
        try:
            if kind == "trl" and "prompt" in obj:
                row = parse_trl_row(obj)
            elif kind == "trl" or isinstance(obj["chosen"], list):
                row = _implicit_conversational(obj)
                kind = "trl"
            elif kind == "hh-rlhf":
                if not isinstance(obj["chosen"], str) or not isinstance(obj["rejected"], str):
                    raise ValueError("HH-RLHF 'chosen' and 'rejected' must be strings")
                row = parse_hh_pair(obj["chosen"], obj["rejected"])
            else:
                raise ImportFileError(f"unknown format {fmt!r}: expected auto, hh-rlhf or trl", filename=filename)
            row_subject = obj.get("subject", subject)
            if row_subject not in SUBJECTS:
                raise ValueError(f"unknown subject {row_subject!r}")
            weight = float(obj.get("weight", 1.0))
            if not 0 <= weight < float("inf"):
                raise ValueError(f"weight must be a non-negative number, got {obj.get('weight')!r}")
        except (ValueError, TypeError, KeyError) as exc:
            if isinstance(exc, ImportFileError):
                raise
            raise ImportFileError(str(exc).strip("'\""), line=n, filename=filename) from None
        if not row["prompt"]:
            raise ImportFileError("empty prompt", line=n, filename=filename)
        if row["chosen"] == row["rejected"]:
            raise ImportFileError("chosen and rejected are identical: no preference", line=n, filename=filename)
        stem = Path(filename).name or "import"
        row.update(subject=row_subject, weight=weight, source=str(obj.get("source") or f"{kind}:{stem}:{n}")[:200])
        rows.append(row)
    if not rows:
        raise ImportFileError("the file holds no rows", filename=filename)
    return rows, detected or fmt, digest


def import_preferences(source, *, filename: str = "", fmt: str = "auto", subject: str = DEFAULT_SUBJECT,
                       user=None) -> ImportBatch:
    """Import a whole HH-RLHF or TRL preference file in one transaction (all or nothing)."""
    filename = filename or (str(source) if isinstance(source, str | Path) else "upload")
    rows, detected, digest = parse_preference_file(source, filename=filename, fmt=fmt, subject=subject)
    with transaction.atomic():
        previous = ImportBatch.objects.filter(sha256=digest).first()
        if previous:
            raise ImportFileError(f"this file was already imported (batch {previous.pk}, {previous.created_at:%Y-%m-%d})",
                                  filename=filename)
        batch = ImportBatch.objects.create(kind="preferences", fmt=detected, filename=Path(filename).name[:300],
                                           sha256=digest, rows=len(rows), created_by=user)
        ImportedPair.objects.bulk_create([ImportedPair(batch=batch, **r) for r in rows], batch_size=2000)
    return batch


# --------------------------------------------------------------------------------------------
# prompt imports (CSV / JSONL)


def _prompt_rows(data: bytes, filename: str) -> Iterator[tuple[int, dict]]:
    is_csv = filename.lower().endswith((".csv", ".csv.gz"))
    if not is_csv:
        yield from _json_lines(data, filename)
        return
    text = "\n".join(t for _, t in _text_lines(data, filename))
    reader = csv.DictReader(io.StringIO(text))
    for row in reader:
        yield reader.line_num, row


def import_prompts(source, *, filename: str = "", subject: str | None = None, user=None) -> ImportBatch:
    """Import pool prompts (CSV or JSONL with subject + text) in one transaction; duplicates skipped."""
    from feedback.services import add_prompt

    filename = filename or (str(source) if isinstance(source, str | Path) else "upload")
    data = _read_bytes(source, filename)
    digest = hashlib.sha256(data).hexdigest()
    parsed = []
    for n, obj in _prompt_rows(data, filename):
        text = obj.get("text") or obj.get("prompt")
        row_subject = (obj.get("subject") or subject or "").strip()
        if not text or not str(text).strip():
            raise ImportFileError("missing 'text'", line=n, filename=filename)
        if row_subject not in SUBJECTS:
            raise ImportFileError(f"unknown or missing subject {row_subject!r}: expected one of {', '.join(SUBJECTS)}",
                                  line=n, filename=filename)
        context = obj.get("context") or []
        if isinstance(context, str):
            try:
                context = json.loads(context)
            except json.JSONDecodeError:
                raise ImportFileError("'context' must be a JSON list of {role, content}", line=n, filename=filename) from None
        if not isinstance(context, list) or not all(isinstance(t, dict) and "content" in t for t in context):
            raise ImportFileError("'context' must be a list of {role, content}", line=n, filename=filename)
        parsed.append((n, row_subject, str(text), context))
    if not parsed:
        raise ImportFileError("the file holds no rows", filename=filename)
    with transaction.atomic():
        if ImportBatch.objects.filter(sha256=digest).exists():
            raise ImportFileError("this file was already imported", filename=filename)
        added = 0
        for n, row_subject, text, context in parsed:
            _, created = add_prompt(subject=row_subject, text=text, context=context, source=Prompt.Source.IMPORT,
                                    source_ref=f"{Path(filename).name}:{n}"[:200])
            added += created
        return ImportBatch.objects.create(kind="prompts", fmt="csv" if filename.lower().endswith((".csv", ".csv.gz")) else "jsonl",
                                          filename=Path(filename).name[:300], sha256=digest, rows=added, created_by=user)


# --------------------------------------------------------------------------------------------
# export


def export_trl_jsonl(snapshot_path: str | Path, out: str | Path, *, style: str = "conversational") -> int:
    """Write a snapshot as a TRL preference JSONL file (``.gz`` → gzip); returns the row count.

    ``conversational`` keeps the context as messages (lossless; re-imports to the same hash),
    ``plain`` writes the prompt text only. ``subject``, ``weight``, ``source``, ``split`` ride along.
    """
    from datasets import load_from_disk

    if style not in {"conversational", "plain"}:
        raise ValueError("style must be conversational or plain")
    dd = load_from_disk(str(snapshot_path))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if out.suffix == ".gz" else open
    n = 0
    with opener(out, "wt", encoding="utf-8") as fh:
        for split in ("train", "test"):
            if dd[split].num_rows == 0:
                continue
            for row in dd[split].iter(batch_size=10_000):
                for i in range(len(row["prompt"])):
                    if style == "conversational":
                        context = json.loads(row["context"][i])
                        rec = {"prompt": [*context, {"role": "user", "content": row["prompt"][i]}],
                               "chosen": [{"role": "assistant", "content": row["chosen"][i]}],
                               "rejected": [{"role": "assistant", "content": row["rejected"][i]}]}
                    else:
                        rec = {"prompt": row["prompt"][i], "chosen": row["chosen"][i], "rejected": row["rejected"][i]}
                    rec.update(subject=row["subject"][i], weight=row["weight"][i], source=row["source"][i], split=split)
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    n += 1
    return n


def export_datasets(snapshot_path: str | Path, out: str | Path) -> Path:
    """Copy a snapshot (a ``datasets`` DatasetDict on disk) to ``out``."""
    import shutil

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new directory")
    shutil.copytree(snapshot_path, out)
    return out
