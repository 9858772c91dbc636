"""Problems from local files, through Hugging Face ``datasets``: column mapping, prompt templates, chat templates.

Files are read locally, never downloaded: ``.jsonl`` / ``.json`` / ``.parquet`` files through
``datasets.load_dataset("json" | "parquet", data_files=...)`` (the loader of the Hugging Face ecosystem, with its
Arrow cache), or a ``datasets.save_to_disk`` folder through ``datasets.load_from_disk``. A ``.json`` file may hold a
list of rows or a dict of splits (``{"train": [...], "test": [...]}``).

A **column mapping** (:class:`Columns`) names the columns holding the prompt (a string, or a list of chat messages
``[{"role", "content"}, ...]``), the ground-truth answer, and optionally an id and a source; a dotted name reads a
nested field (``reward_model.ground_truth``, as in verl's parquet files). Rows come out as plain dicts
``{"prompt", "answer", "id", "source"}``.

The prompt a model sees is ``render_prompt``: the task's template (``"none"``, ``"dapo"`` or a format string with
``{prompt}``, :data:`TEMPLATES`), then, with ``chat_template``, the tokenizer's own chat template
(``tokenizer.apply_chat_template(..., add_generation_prompt=True)``).

Every failure is a one-line ``ValueError`` naming the file or column and what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ..registry import Registry
from .answers import canonical_number

__all__ = ["DAPO_TEMPLATE", "TEMPLATES", "Columns", "canonical_number", "gsm8k_final_answer", "load_problems",
           "missing_file_message", "prepare_gsm8k", "read_table", "render_prompt", "render_prompts",
           "row_answer"]

DAPO_TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{prompt}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)
"""The DAPO-Math prompt template (the wording of the DAPO-Math-17k prompts the paper trains on)."""

TEMPLATES: Registry[str] = Registry("prompt template")
"""Template name -> format string with a ``{prompt}`` field (``task.template``; a config may also give the format
string itself)."""
TEMPLATES.register("none", "{prompt}")
TEMPLATES.register("dapo", DAPO_TEMPLATE)

SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Columns:
    """Which column of a data file holds what (dotted names read nested fields)."""

    prompt: str = "prompt"
    """The problem text, or a list of chat messages."""
    answer: str = "answer"
    """The ground-truth final answer (compared by a verifier or reward function)."""
    id: Optional[str] = None
    """A problem id (None: the row number)."""
    source: Optional[str] = None
    """Where the problem comes from (e.g. 'aime2024'); None: no source column."""


def missing_file_message(path: Any, what: str) -> str:
    """The one-line message for a data file that is not there."""
    return (f"{what} {str(path)!r} does not exist; nothing is downloaded at run time: export the data to a local "
            f".jsonl/.parquet file with a prompt and an answer column (see bandpo/training/presets/README.md) and "
            f"give its path")


def _datasets() -> Any:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise ValueError("reading data files needs Hugging Face datasets: pip install datasets "
                         "(it is in bandpo's 'train' extra)") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # failures are re-raised as one line below
    return datasets


def _check_text_file(path: Path, what: str) -> None:
    """Raise a one-line ``ValueError`` naming ``path`` if it cannot be read, is not UTF-8 text or holds only
    whitespace (reads it in 1 MiB chunks; the JSON readers would fail later without naming the file)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines, blank = 0, 1, True
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(1 << 20)
                pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous chunk
                try:
                    text = decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as e:
                    line = lines + e.object[:e.start].count(b"\n")
                    raise ValueError(f"{what} {str(path)!r} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                                     f"line {line}, byte offset {offset - pending + e.start}); save it as UTF-8"
                                     ) from None
                if not chunk:
                    break
                blank = blank and not text.strip()
                lines += chunk.count(b"\n")
                offset += len(chunk)
    except OSError as e:
        raise ValueError(f"{what} {str(path)!r} cannot be read ({e.strerror or e})") from None
    if blank:
        raise ValueError(f"{what} {str(path)!r} is empty; it needs rows (one JSON object per line in a .jsonl file, "
                         "a list of objects in a .json file)")


def read_table(path: Any, *, split: str = "train", what: str = "data file") -> list:
    """All rows of a local ``.jsonl``/``.json``/``.parquet`` file or ``save_to_disk`` folder, as dicts.

    Raises:
        ValueError: the path does not exist, has another suffix, cannot be parsed, or lacks ``split``.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(missing_file_message(path, what))
    if p.is_dir():
        ds_mod = _datasets()
        try:
            ds = ds_mod.load_from_disk(str(p))
        except Exception as e:  # noqa: BLE001 - any reader failure becomes one line naming the folder
            raise ValueError(f"{what} {str(p)!r} is a folder but not a saved Hugging Face dataset "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        if isinstance(ds, ds_mod.DatasetDict):
            if split not in ds:
                raise ValueError(f"{what} {str(p)!r} has no split {split!r}; splits: {sorted(ds)}")
            ds = ds[split]
        return [dict(r) for r in ds]
    if p.suffix not in SUFFIXES:
        raise ValueError(f"{what} {str(p)!r}: unsupported file type {p.suffix!r}; use .jsonl, .json, .parquet or a "
                         "datasets.save_to_disk folder")
    if p.suffix != ".parquet":
        _check_text_file(p, what)
    if p.suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{what} {str(p)!r} is not valid JSON ({e})") from None
        if isinstance(data, dict):
            if split not in data:
                raise ValueError(f"{what} {str(p)!r} holds a dict without the split {split!r}; keys: {sorted(data)}")
            data = data[split]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{what} {str(p)!r} must hold a list of row objects (or a dict of such lists)")
        return data
    ds_mod = _datasets()
    builder = "json" if p.suffix == ".jsonl" else "parquet"
    try:
        ds = ds_mod.load_dataset(builder, data_files=str(p), split="train")
    except Exception as e:  # noqa: BLE001 - a corrupt file becomes one line naming it
        while e.__cause__ is not None or e.__context__ is not None:  # the reader's own error, not the wrapper's
            e = e.__cause__ or e.__context__  # type: ignore[assignment]
        msg = (str(e).splitlines() or [""])[0]
        raise ValueError(f"{what} {str(p)!r} could not be read as {builder} ({type(e).__name__}: {msg})") from None
    try:
        return [dict(r) for r in ds]
    except Exception as e:  # noqa: BLE001 - e.g. a parquet string column that is not UTF-8
        raise ValueError(f"{what} {str(p)!r} could not be read as {builder} ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]})") from None


def _get(row: dict, column: str, what: str) -> Any:
    value: Any = row
    for part in column.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ValueError(f"{what}: column {column!r} not found; the rows have the columns {sorted(row)} "
                             "(set the column mapping)")
        value = value[part]
    return value


def _row_place(path: Any, i: int) -> str:
    """Where row ``i`` (from 0) of a data file is, for messages: ``line N`` of a ``.jsonl`` file (blank lines are
    skipped, as the reader skips them), else ``row i``."""
    p = Path(path).expanduser()
    if p.suffix == ".jsonl" and p.is_file():
        with open(p, "rb") as f:
            n = -1
            for number, line in enumerate(f, 1):
                n += bool(line.strip())
                if n == i:
                    return f"line {number}"
    return f"row {i}"


def row_answer(row: dict, column: str, what: str, path: Any, i: int) -> str:
    """The ground-truth answer of row ``i`` as text. A row without one is refused, naming the file and line: a
    missing key, null, an empty list or an empty (or all-blank) string. An empty answer cannot be verified (an
    empty completion would match it), so it is an error, not a problem nobody can solve."""
    parts = column.split(".")
    value: Any = row
    for part in parts:
        if not isinstance(value, dict) or part not in value:
            if i == 0:  # the first row lacks the column: name the columns the rows have
                _get(row, column, what)
            value = None
            break
        value = value[part]
    if isinstance(value, list) and len(value) == 1:  # some exports wrap the answer in a list
        value = value[0]
    why = None
    if value is None:
        why = "has no answer (the key is missing or null)"
    elif isinstance(value, list) and not value:
        why = "has an empty answer list"
    elif isinstance(value, str) and not value.strip():
        why = "has an empty answer (an empty answer cannot be verified)"
    if why:
        raise ValueError(f"{what} {str(path)!r} {_row_place(path, i)}: column {column!r} {why}; give every problem "
                         "its ground-truth answer or remove the row")
    return str(value)


def load_problems(
    path: Any,
    *,
    columns: Columns = Columns(),
    split: str = "train",
    template: str = "none",
    limit: Optional[int] = None,
    what: str = "data file",
) -> list:
    """Rows ``{"prompt", "answer", "id", "source"}`` of a local data file, with the prompt template applied.

    Args:
        columns: the column mapping. template: a ``TEMPLATES`` name or a format string with ``{prompt}`` (applied
            to string prompts; chat-message prompts are kept as they are). limit: keep the first ``limit`` rows.
    Raises:
        ValueError: a missing file or column, an empty file, a prompt that is neither text nor chat messages, a row
            without an answer (missing, null, empty), named by file and line.
    """
    raw = read_table(path, split=split, what=what)
    if limit is not None:
        raw = raw[:limit]
    if not raw:
        raise ValueError(f"{what} {str(path)!r} has no rows")
    fmt = TEMPLATES.find(template) or template
    if "{prompt}" not in fmt:
        raise ValueError(f"{what} {str(path)!r}: template {template!r} is neither one of {TEMPLATES.names()} nor a "
                         "format string with '{prompt}'")
    out = []
    for i, r in enumerate(raw):
        where = f"{what} {str(path)!r} row {i}"
        prompt = _get(r, columns.prompt, where)
        if isinstance(prompt, str):
            prompt = fmt.format(prompt=prompt)
        elif not (isinstance(prompt, list) and all(isinstance(m, dict) and "content" in m for m in prompt)):
            raise ValueError(f"{where}: column {columns.prompt!r} must hold text or a list of chat messages "
                             f"(it holds {type(prompt).__name__})")
        answer = row_answer(r, columns.answer, what, path, i)
        out.append({
            "prompt": prompt,
            "answer": answer,
            "id": str(_get(r, columns.id, where)) if columns.id else str(i),
            "source": str(_get(r, columns.source, where)) if columns.source else None,
        })
    return out


def render_prompt(tokenizer: Any, prompt: Any, *, chat_template: bool) -> str:
    """The text the model is conditioned on: ``prompt`` itself, or (``chat_template`` or a message list) the
    tokenizer's chat template with a generation prompt.

    Raises:
        ValueError: a chat template is needed but the tokenizer has none.
    """
    if not chat_template and isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"the tokenizer {name!r} has no chat template, but the prompts need one "
                         "(task.chat_template = true or chat-message prompts); set task.chat_template false or use "
                         "a tokenizer with a chat template")
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_prompts(tokenizer: Any, prompts: Sequence[Any], *, chat_template: bool) -> list:
    """:func:`render_prompt` for each prompt."""
    return [render_prompt(tokenizer, p, chat_template=chat_template) for p in prompts]



# ----------------------------------------------------------------------------------------------------------
# Numbers and GSM8K (grade-school maths word problems, arXiv 2110.14168)
# ----------------------------------------------------------------------------------------------------------

def gsm8k_final_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: the text after its last ``####`` (``"... #### 72"`` -> ``"72"``),
    as :func:`canonical_number`.

    Raises:
        ValueError: the solution has no ``####`` line or no number after it.
    """
    head, sep, tail = str(solution).rpartition("####")
    if not sep:
        raise ValueError(f"a GSM8K answer must end with '#### <number>'; got {str(solution)[-60:]!r}")
    value = canonical_number(tail)
    if value is None:
        raise ValueError(f"a GSM8K answer must end with '#### <number>'; got '####{tail[:40]}'")
    return value


def prepare_gsm8k(src: Any, dst: Any, *, prefix: Optional[str] = None, split: str = "train") -> int:
    """Convert a GSM8K file (``{"question": ..., "answer": "<worked solution> #### 72"}`` per row, as published:
    ``.jsonl``, ``.json`` or ``.parquet``) into the trainer's format, one JSON object per line:

        {"prompt": question, "answer": "72", "id": "<prefix>-<row>", "solution": the worked solution}

    ``answer`` is :func:`gsm8k_final_answer` (the number after ``####``, canonical); ``id`` uses ``prefix`` (default:
    the source file's stem). Rows keep their order. Returns the number of rows written.

    Raises:
        ValueError: a missing or unreadable file, a row without ``question``/``answer``, an answer without ``####``.
    """
    if not Path(src).expanduser().exists():
        raise ValueError(f"GSM8K file {str(src)!r} does not exist; fetch GSM8K once with `huggingface-cli download "
                         "openai/gsm8k --repo-type dataset --local-dir data/gsm8k-hf` and give "
                         "data/gsm8k-hf/main/train-00000-of-00001.parquet (or test-...)")
    rows = read_table(src, split=split, what="GSM8K file")
    if not rows:
        raise ValueError(f"GSM8K file {str(src)!r} has no rows")
    prefix = prefix or Path(src).name.split(".")[0]
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r.get("question"), str) or not isinstance(r.get("answer"), str):
            raise ValueError(f"GSM8K file {str(src)!r} row {i}: needs text columns 'question' and 'answer'; "
                             f"has {sorted(r)}")
        try:
            final = gsm8k_final_answer(r["answer"])
        except ValueError as e:
            raise ValueError(f"GSM8K file {str(src)!r} row {i}: {e}") from None
        solution = r["answer"].rpartition("####")[0].strip()
        out.append({"prompt": r["question"].strip(), "answer": final, "id": f"{prefix}-{i:05d}", "solution": solution})
    dst = Path(dst).expanduser()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in out))
    tmp.replace(dst)
    return len(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m bandpo.training.data gsm8k SRC DST [--prefix P]``: :func:`prepare_gsm8k` (one-line errors)."""
    from ..cli import ArgumentParser, check_out_path

    ap = ArgumentParser(prog="python -m bandpo.training.data",
                        description="Prepare local data files for the trainer (nothing is downloaded).")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gsm8k", help="GSM8K {question, answer '... #### N'} -> {prompt, answer N, id, solution} JSONL")
    g.add_argument("src", help="a GSM8K .jsonl/.json/.parquet file (e.g. main/train-00000-of-00001.parquet)")
    g.add_argument("dst", help="the .jsonl file to write (e.g. data/gsm8k_train.jsonl)")
    g.add_argument("--prefix", default=None, help="id prefix (default: the source file's stem)")
    g.add_argument("--split", default="train", help="split of a .json dict or a save_to_disk folder (default train)")
    args = ap.parse_args(argv)
    try:
        check_out_path(args.dst, flag="DST", suffixes=(".jsonl",))
        n = prepare_gsm8k(args.src, args.dst, prefix=args.prefix, split=args.split)
    except (ValueError, OSError) as e:
        return ap.report(e)
    print(f"wrote {n} problems to {args.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
