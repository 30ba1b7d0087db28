"""Hostile and broken input through every CLI entry point: one line naming the problem, the right
exit code, no traceback, and nothing written (the Foundry cache and the work folder byte-identical)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from slmops.toolkit import cli
from slmops.toolkit.core import settings
from slmops.toolkit.stages import register


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file, folder and link under ``roots`` with its content hash or link target.

    Foundry Local's own log and app-data folders are left out: the runtime writes them as it
    runs; they hold no result of ours.
    """
    seen = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if {".logs", ".app"} & set(path.relative_to(root).parts):
                continue
            if path.is_symlink():
                seen[str(path)] = "link:" + os.readlink(path)
            elif path.is_file():
                seen[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                seen[str(path)] = "dir"
    return seen


@pytest.fixture(scope="module")
def hostile(tiny_model: Path, tiny_int4: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A registered model and a folder of broken and hostile files for the battery."""
    work = tmp_path_factory.mktemp("hostile")
    register.register(tiny_int4, "hostile-ok", force=True)
    files: dict[str, Path] = {"work": work, "model": tiny_model, "onnx": tiny_int4}

    def model_copy(name: str, source: Path = tiny_model) -> Path:
        target = work / name
        shutil.copytree(source, target)
        files[name] = target
        return target

    (model_copy("src-no-config") / "config.json").unlink()
    (model_copy("src-not-utf8") / "config.json").write_bytes(b'{"architectures": ["\xff\xfe"]}')
    (model_copy("src-not-json") / "config.json").write_text("{architectures: ")
    for f in model_copy("src-no-weights").glob("*.safetensors"):
        f.unlink()
    for f in model_copy("src-empty-weights").glob("*.safetensors"):
        f.write_bytes(b"")
    secret = work / "secret.txt"
    secret.write_text("root:x:0:0\n")
    files["data-ok"] = work / "data.jsonl"
    files["data-ok"].write_text(json.dumps({"question": "q?", "answer": "a.", "paraphrase": "q2?", "expect": ["a"]}))
    leaky = model_copy("src-link-out")
    (leaky / "extra.safetensors").symlink_to(secret)
    weird = model_copy("src-weird-arch")
    config = json.loads((weird / "config.json").read_text())
    (weird / "config.json").write_text(json.dumps({**config, "architectures": ["WeirdForCausalLM"]}))
    (model_copy("onnx-bad-config", tiny_int4) / "genai_config.json").write_text('{"model": ')
    (model_copy("onnx-config-not-utf8", tiny_int4) / "genai_config.json").write_bytes(b"\xff\xfe\x00")
    (model_copy("onnx-no-decoder", tiny_int4) / "genai_config.json").write_text('{"model": {"context_length": 5}}')
    (model_copy("onnx-link-out", tiny_int4) / "notes.txt").symlink_to(secret)
    sandbox = model_copy("onnx-hostile-template", tiny_int4)
    tokenizer = json.loads((sandbox / "tokenizer_config.json").read_text())
    tokenizer["chat_template"] = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    (sandbox / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    (sandbox / "chat_template.jinja").write_text(tokenizer["chat_template"])  # where transformers reads it first
    model_copy("onnx-other", tiny_int4)
    texts = {
        "cases-not-utf8.jsonl": b'{"messages": [{"role": "user", "content": "\xff"}]}\n',
        "cases-bad-regex.jsonl": b'{"messages": [{"role": "user", "content": "hi"}], "expect": {"regex": "(["}}\n',
        "cases-bad-schema.jsonl": b'{"messages": [{"role": "user", "content": "hi"}], '
                                  b'"expect": {"json_schema": {"type": 5}}}\n',
        "cases-bad-role.jsonl": b'{"messages": [{"role": "root", "content": "hi"}]}\n',
        "cases-contains-str.jsonl": b'{"messages": [{"role": "user", "content": "hi"}], "expect": {"contains": "a"}}\n',
        "cases-empty.jsonl": b"\n\n",
        "template-not-json.json": b"{system",
        "template-no-content.json": json.dumps({"system": "S", "user": "{Content}", "assistant": "{Content}",
                                                "prompt": "{Content}"}).encode(),
        "params-not-utf8.yaml": b"precisions: [\xff]\n",
        "params-scalar-list.yaml": b"precisions: int4\n",
        "params-unknown.yaml": b"precisions: [int4]\nrm_rf: true\n",
        "params-not-mapping.yaml": b"- int4\n",
        "params-bad-yaml.yaml": b"precisions: [int4\n",
        "params-huge-sweep.yaml": b"sweep:\n  repeats: [1, 2, 3, 4, 5, 6, 7, 8, 9]\n"
                                  b"  warmup: [0, 1, 2, 3, 4, 5, 6, 7]\n",
        "params-evil-prefix.yaml": b"name_prefix: ../../etc\n",
        "params-bool-count.yaml": b"repeats: true\n",
    }
    for name, content in texts.items():
        (work / name).write_bytes(content)
        files[name] = work / name
    (work / "not-a-run").mkdir()
    files["not-a-run"] = work / "not-a-run"
    # A user's project: their model beside their notes (an --out here must not delete either).
    files["project"] = work / "project"
    shutil.copytree(tiny_model, work / "project" / "mybase")
    (work / "project" / "notes.txt").write_text("my notes\n")
    return files


# (case id, argv with {placeholders} from the fixture, exit code, words the one-line message must hold)
BATTERY = [
    ("convert-missing", ["convert", "{work}/nope", "--out", "{work}/o"], 2, "no such folder"),
    ("convert-a-file", ["convert", "{data-ok}", "--out", "{work}/o"], 2, "a file, not a model folder"),
    ("convert-base-without-adapter", ["convert", "{model}", "--base", "{model}", "--out", "{work}/o"], 2,
     "only with a LoRA adapter"),
    ("finetune-missing-data", ["finetune", "{work}/nope.jsonl", "--base", "{model}", "--out", "{work}/a"], 2,
     "No dataset"),
    ("finetune-missing-base", ["finetune", "{data-ok}", "--base", "{work}/nope", "--out", "{work}/a"], 2,
     "no such folder"),
    ("finetune-steps-0", ["finetune", "{data-ok}", "--base", "{model}", "--out", "{work}/a", "--steps", "0"], 2,
     "out of range"),
    ("convert-no-config", ["convert", "{src-no-config}", "--out", "{work}/o"], 2, "no config.json"),
    ("convert-config-not-utf8", ["convert", "{src-not-utf8}", "--out", "{work}/o"], 2, "UTF-8"),
    ("convert-config-not-json", ["convert", "{src-not-json}", "--out", "{work}/o"], 2, "not valid UTF-8 JSON"),
    ("convert-no-weights", ["convert", "{src-no-weights}", "--out", "{work}/o"], 2, "no weights"),
    ("convert-empty-weights", ["convert", "{src-empty-weights}", "--out", "{work}/o"], 2, "not a readable"),
    ("convert-link-out", ["convert", "{src-link-out}", "--out", "{work}/o"], 2, "lead outside"),
    ("convert-weird-arch", ["convert", "{src-weird-arch}", "--out", "{work}/o"], 2, "not supported"),
    ("convert-fp16-on-cpu", ["convert", "{model}", "--precision", "fp16", "--out", "{work}/o"], 2, "GPU"),
    ("convert-block-size", ["convert", "{model}", "--block-size", "48", "--out", "{work}/o"], 2, "invalid choice"),
    ("convert-recipe", ["convert", "{model}", "--recipe", "nope", "--out", "{work}/o"], 2, "invalid choice"),
    ("convert-out-holds-source", ["convert", "{project}/mybase", "--out", "{project}"], 2,
     "holds the source model"),
    ("convert-out-is-source", ["convert", "{project}/mybase", "--out", "{project}/mybase"], 2, "is the source model"),
    ("convert-out-other-files", ["convert", "{model}", "--out", "{project}"], 2, "holds other files"),
    ("convert-out-file", ["convert", "{model}", "--out", "{work}/secret.txt"], 2, "is a file"),
    ("finetune-out-holds-base", ["finetune", "{data-ok}", "--base", "{project}/mybase", "--out", "{project}"], 2,
     "holds the base model"),
    ("finetune-out-other-files", ["finetune", "{data-ok}", "--base", "{model}", "--out", "{project}"], 2,
     "holds other files"),
    ("convert-dry-run-builder", ["convert", "{model}", "--dry-run", "--out", "{work}/o"], 2, "olive-config"),
    ("register-missing", ["register", "{work}/nope", "--name", "x"], 2, "no such folder"),
    ("register-traversal", ["register", "{onnx}", "--name", "../evil"], 2, "not safe"),
    ("register-slash", ["register", "{onnx}", "--name", "a/b"], 2, "not safe"),
    ("register-newline", ["register", "{onnx}", "--name", "evil\n"], 2, "not safe"),
    ("register-empty-name", ["register", "{onnx}", "--name", ""], 2, "empty"),
    ("register-long-name", ["register", "{onnx}", "--name", "x" * 65], 2, "at most 64"),
    ("register-dots", ["register", "{onnx}", "--name", ".."], 2, "not safe"),
    ("register-colon", ["register", "{onnx}", "--name", "a:1"], 2, "not safe"),
    ("register-version-0", ["register", "{onnx}", "--name", "x", "--version", "0"], 2, "out of range"),
    ("register-temperature", ["register", "{onnx}", "--name", "x", "--temperature", "5"], 2, "out of range"),
    ("register-top-p-0", ["register", "{onnx}", "--name", "x", "--top-p", "0"], 2, "top_p"),
    ("register-nan", ["register", "{onnx}", "--name", "x", "--repetition-penalty", "nan"], 2, "out of range"),
    ("register-max-length", ["register", "{onnx}", "--name", "x", "--max-length", "999999"], 2, "context"),
    ("register-threads-0", ["register", "{onnx}", "--name", "x", "--threads", "0"], 2, "whole number from 1 to 1024"),
    ("register-template", ["register", "{onnx}", "--name", "x", "--template", "nope"], 2, "invalid choice"),
    ("register-template-file-json", ["register", "{onnx}", "--name", "x", "--template-file",
                                     "{template-not-json.json}"], 2, "Cannot read the template file"),
    ("register-template-no-content", ["register", "{onnx}", "--name", "x", "--template-file",
                                      "{template-no-content.json}"], 2, "exactly once"),
    ("register-bad-genai-config", ["register", "{onnx-bad-config}", "--name", "x"], 2, "not valid JSON"),
    ("register-genai-not-utf8", ["register", "{onnx-config-not-utf8}", "--name", "x"], 2, "not UTF-8"),
    ("register-genai-no-decoder", ["register", "{onnx-no-decoder}", "--name", "x"], 2, "model.decoder"),
    ("register-link-out", ["register", "{onnx-link-out}", "--name", "x"], 2, "lead outside"),
    ("register-hostile-template", ["register", "{onnx-hostile-template}", "--name", "x"], 2, "chat template"),
    ("register-name-taken", ["register", "{onnx-other}", "--name", "hostile-ok"], 2, "--force"),
    ("test-requests-negative", ["test", "hostile-ok", "--requests", "-1"], 2, "out of range"),
    ("test-cases-missing", ["test", "hostile-ok", "--cases", "{work}/none.jsonl"], 2, "No cases file"),
    ("test-cases-not-utf8", ["test", "hostile-ok", "--cases", "{cases-not-utf8.jsonl}"], 2, "UTF-8"),
    ("test-cases-bad-regex", ["test", "hostile-ok", "--cases", "{cases-bad-regex.jsonl}"], 2, "does not compile"),
    ("test-cases-bad-schema", ["test", "hostile-ok", "--cases", "{cases-bad-schema.jsonl}"], 2, "not a valid schema"),
    ("test-cases-bad-role", ["test", "hostile-ok", "--cases", "{cases-bad-role.jsonl}"], 2, ":1 is not a valid"),
    ("test-cases-contains-str", ["test", "hostile-ok", "--cases", "{cases-contains-str.jsonl}"], 2, "list"),
    ("test-cases-empty", ["test", "hostile-ok", "--cases", "{cases-empty.jsonl}"], 2, "no cases"),
    ("test-unknown-model", ["test", "no-such-model", "--requests", "0"], 2, "No model named"),
    ("test-min-top1", ["test", "hostile-ok", "--min-top1", "2"], 2, "out of range"),
    ("bench-unknown-model", ["bench", "no-such-model"], 2, "No model named"),
    ("bench-repeats-0", ["bench", "hostile-ok", "--repeats", "0"], 2, "out of range"),
    ("bench-gen-tokens-1", ["bench", "hostile-ok", "--gen-tokens", "1"], 2, "out of range"),
    ("bench-threads-0", ["bench", "hostile-ok", "--threads", "0"], 2, "out of range"),
    ("bench-engine", ["bench", "hostile-ok", "--engines", "nope"], 2, "invalid choice"),
    ("run-params-missing", ["run", "--params", "{work}/none.yaml", "--out", "{work}/r"], 2, "No parameters file"),
    ("run-params-not-utf8", ["run", "--params", "{params-not-utf8.yaml}", "--out", "{work}/r"], 2, "UTF-8"),
    ("run-params-scalar", ["run", "--params", "{params-scalar-list.yaml}", "--out", "{work}/r"], 2, "must be a list"),
    ("run-params-unknown", ["run", "--params", "{params-unknown.yaml}", "--out", "{work}/r"], 2, "rm_rf"),
    ("run-params-not-mapping", ["run", "--params", "{params-not-mapping.yaml}", "--out", "{work}/r"], 2, "mapping"),
    ("run-params-bad-yaml", ["run", "--params", "{params-bad-yaml.yaml}", "--out", "{work}/r"], 2, "not valid YAML"),
    ("run-params-huge-sweep", ["run", "--params", "{params-huge-sweep.yaml}", "--out", "{work}/r"], 2, "72 comb"),
    ("run-params-evil-prefix", ["run", "--params", "{params-evil-prefix.yaml}", "--out", "{work}/r"], 2, "name_prefix"),
    ("run-params-bool-count", ["run", "--params", "{params-bool-count.yaml}", "--out", "{work}/r"], 2, "whole number"),
    ("run-max-runs-0", ["run", "--params", "{params-huge-sweep.yaml}", "--out", "{work}/r", "--max-runs", "0"], 2,
     "out of range"),
    ("report-missing", ["report", "{work}/no-run"], 2, "No run folder"),
    ("report-not-a-run", ["report", "{not-a-run}", "--zip"], 2, "No run folder"),
    ("chat-unknown-model", ["chat", "no-such-model"], 2, "No model named"),
    ("register-threads-word", ["register", "{onnx}", "--name", "x", "--threads", "fast"], 2, "auto, default"),
    ("serve-unknown-model", ["serve", "no-such-model"], 2, "No model named"),
    ("serve-open-host-no-key", ["serve", "hostile-ok", "--host", "0.0.0.0"], 2, "--api-key"),
    ("serve-blank-key", ["serve", "hostile-ok", "--api-key", " "], 2, "non-empty token"),
    ("serve-port", ["serve", "hostile-ok", "--port", "70000"], 2, "out of range"),
    ("serve-max-queue", ["serve", "hostile-ok", "--max-queue", "-1"], 2, "out of range"),
    ("serve-request-timeout", ["serve", "hostile-ok", "--request-timeout", "soon"], 2, "not a whole number"),
    ("rm-traversal", ["rm", "../../etc"], 2, "not safe"),
    ("rm-unknown-model", ["rm", "no-such-model"], 2, "No model named"),
    ("recipes-missing", ["recipes", "{work}/nope", "--reference", "{onnx}", "--out", "{work}/o"], 2, "no such folder"),
]


@pytest.mark.parametrize(("argv", "code", "says"), [case[1:] for case in BATTERY], ids=[case[0] for case in BATTERY])
def test_hostile_input_is_refused_cleanly_and_changes_nothing(
        hostile: dict[str, Path], argv: list[str], code: int, says: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = [re.sub(r"\{([^}]+)\}", lambda m: str(hostile[m.group(1)]), part) for part in argv]
    cache = settings.cache_dir()
    before = snapshot(cache, hostile["work"])
    assert cli.main(args) == code
    err = capsys.readouterr().err.strip()
    assert says in err, err
    assert "Traceback" not in err
    # One line naming the problem (argparse adds its usage line above its own one-line error).
    assert len(err.splitlines()) == 1 or err.splitlines()[0].startswith("usage:"), err
    assert snapshot(cache, hostile["work"]) == before


@pytest.mark.parametrize("command", ["convert", "finetune"])
def test_an_out_that_is_the_current_folder_is_refused(
        tiny_model: Path, hostile: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], command: str) -> None:
    """``--out .`` (or a folder above it) would have the result replace the whole current folder."""
    (tmp_path / "inside").mkdir()
    (tmp_path / "thesis.txt").write_text("years of work\n")
    monkeypatch.chdir(tmp_path / "inside")
    argv = (["convert", str(tiny_model)] if command == "convert"
            else ["finetune", str(hostile["data-ok"]), "--base", str(tiny_model)])
    for out in (".", ".."):
        assert cli.main([*argv, "--out", out]) == 2
        assert "the current folder" in capsys.readouterr().err
    assert (tmp_path / "thesis.txt").read_text() == "years of work\n" and (tmp_path / "inside").is_dir()
