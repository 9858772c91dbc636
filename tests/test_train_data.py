"""Local data through Hugging Face datasets (bandpo.training.data), verifiers and the math_file task.

Run: .venv/bin/python -m pytest -q tests/test_train_data.py
"""

from __future__ import annotations

import json

import pytest

from bandpo.training.data import Columns, load_problems, read_table, render_prompt
from bandpo.training.tasks import DAPO_TEMPLATE, REWARD_FUNCS, build_task
from bandpo.training.verifiers import VERIFIERS, verify_dapo, verify_exact, verify_math

ROWS = [{"problem": f"What is {i} + {i}?", "sol": {"gt": str(2 * i)}, "uid": f"p{i}", "src": "toy"} for i in range(4)]


@pytest.fixture()
def files(tmp_path):
    datasets = pytest.importorskip("datasets")
    jsonl = tmp_path / "toy.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    parquet = tmp_path / "toy.parquet"
    datasets.Dataset.from_list(ROWS).to_parquet(str(parquet))
    js = tmp_path / "toy.json"
    js.write_text(json.dumps({"test": ROWS}))
    folder = tmp_path / "saved"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(folder))
    return {"jsonl": jsonl, "parquet": parquet, "json": js, "folder": folder}


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "json", "folder"])
def test_every_format_reads_the_same_rows_with_a_column_mapping(files, kind):
    columns = Columns(prompt="problem", answer="sol.gt", id="uid", source="src")
    rows = load_problems(files[kind], columns=columns, split="test", template="dapo")
    assert len(rows) == 4
    assert rows[3] == {"prompt": DAPO_TEMPLATE.format(prompt="What is 3 + 3?"), "answer": "6", "id": "p3",
                       "source": "toy"}
    assert load_problems(files[kind], columns=Columns("problem", "sol.gt"), split="test", limit=2)[1] == {
        "prompt": "What is 1 + 1?", "answer": "2", "id": "1", "source": None}


def test_bad_files_and_columns_fail_in_one_line(files, tmp_path):
    cases = [
        (tmp_path / "none.jsonl", {}, r"data file '.*none.jsonl' does not exist; nothing is downloaded"),
        (files["jsonl"], {}, r"column 'prompt' not found; the rows have the columns \['problem', 'sol', 'src', 'uid'\]"),
        (files["jsonl"], {"columns": Columns("problem", "sol.answer")}, "column 'sol.answer' not found"),
        (files["json"], {"split": "train"}, r"without the split 'train'; keys: \['test'\]"),
        (files["folder"], {"split": "train"}, r"has no split 'train'; splits: \['test'\]"),
        (files["jsonl"], {"columns": Columns("problem", "sol.gt"), "template": "Q: {question}"}, "neither one of"),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "answer": \n')
    cases.append((bad, {}, r"could not be read as json \("))
    (tmp_path / "data.csv").write_text("a,b\n")
    cases.append((tmp_path / "data.csv", {}, r"unsupported file type '.csv'"))
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    cases.append((empty, {}, "has no rows"))
    for path, kw, msg in cases:
        with pytest.raises(ValueError, match=msg) as err:
            load_problems(path, **kw)
        assert "\n" not in str(err.value)


def test_chat_template_of_the_tokenizer(files):
    from bandpo.training.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    assert render_prompt(tok, "1+1=", chat_template=False) == "1+1="
    with pytest.raises(ValueError, match="has no chat template"):
        render_prompt(tok, "1+1=", chat_template=True)
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert render_prompt(tok, "1+1=", chat_template=True) == "<user>1+1=<assistant>"
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2="}]
    assert render_prompt(tok, msgs, chat_template=False) == "<system>be brief<user>2+2=<assistant>"


def test_math_file_task_reads_through_datasets(files):
    from bandpo.training.config import TaskConfig

    cfg = TaskConfig(name="math_file", path=str(files["parquet"]), prompt_column="problem",
                     answer_column="sol.gt", template="none")
    task = build_task(cfg, 0)
    got = sorted(r["answer"] for r in task.rows(0, 4))
    assert got == ["0", "2", "4", "6"] and task.verifier == "dapo" and task.heldout_rows is None
    assert read_table(files["jsonl"])[0] == ROWS[0]


def test_verifiers():
    assert verify_exact(" 46\n", "46") == (True, "46") and verify_exact("", "1") == (False, None)
    assert verify_dapo("so...\nAnswer: $\\boxed{1,000}$.", "1000") == (True, "1000")
    assert verify_dapo("Answer: 12\nAnswer: 13", "12") == (False, "13")  # the last Answer: line counts
    assert verify_dapo("the answer is 12", "12") == (False, None)
    assert verify_dapo("Answer: 5" + "x" * 400, "5") == (False, None)  # only the last 300 characters
    assert set(VERIFIERS.names()) >= {"exact", "dapo", "math_verify"}


def test_math_verify_verifier_and_reward():
    pytest.importorskip("math_verify")
    assert verify_math("so the answer is $\\boxed{\\frac{1}{2}}$", "0.5").correct
    assert verify_math("We get \\boxed{2\\sqrt{2}}", "\\sqrt{8}").correct
    assert not verify_math("\\boxed{3}", "4").correct
    assert verify_math("no number here", "4") == (False, None)
    assert verify_math("$\\boxed{0.5}$", "1/2").key == verify_math("$\\boxed{\\frac12}$", "1/2").key  # one vote
    reward = REWARD_FUNCS.get("math_verify")
    assert reward(["", ""], ["\\boxed{6}", "\\boxed{7}"], answer=["6", "6"]) == [1.0, 0.0]


def test_math_verify_missing_is_one_line(monkeypatch):
    import builtins

    import bandpo.training.verifiers as v

    real_import = builtins.__import__

    def no_math_verify(name, *args, **kwargs):
        if name == "math_verify":
            raise ImportError("no module")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_math_verify)
    monkeypatch.setattr(v, "_MATH_VERIFY", v._MathVerify())
    with pytest.raises(ValueError, match="needs Hugging Face's math-verify: pip install math-verify"):
        verify_math("\\boxed{1}", "1")
