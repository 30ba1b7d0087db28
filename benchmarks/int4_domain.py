"""Domain pass rate of INT4 builds against their FP32, as the checklist judges answers (issue 25).

Asks each build the run's domain cases (``cases.jsonl``: trained questions and held-out
paraphrases, tool cases left out) in ONNX Runtime GenAI directly, as Foundry Local decodes them
for the checklist: the build's chat template, greedy, the registration's repetition penalty
(:data:`slmops.toolkit.domain.options.REPETITION_PENALTY`), 48 new tokens at most, stopping at the
build's end-of-turn tokens. Each answer is judged by the checklist's rules
(:func:`slmops.toolkit.stages.checklist.cases.judge`). Prints, per build, the cases passed and
the cases FP32 passes that the build fails.

    .venv/bin/python benchmarks/int4_domain.py --cases outputs/demo/cases.jsonl \\
        fp32=outputs/demo/models/fp32 int4=outputs/demo/models/int4 rotated=/tmp/rotated-int4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from slmops.toolkit.domain.jinja_render import render_jinja
from slmops.toolkit.domain.options import REPETITION_PENALTY
from slmops.toolkit.runtimes.genai_folders import readable_dir
from slmops.toolkit.stages.checklist.cases import judge, load_cases

MAX_NEW_TOKENS = 48


def answers(model_dir: Path, cases: list[dict]) -> list[str]:
    """Greedy answers of the build in ``model_dir`` to each case's messages."""
    import onnxruntime_genai as og

    model = og.Model(str(readable_dir(model_dir)))
    tokenizer = og.Tokenizer(model)
    template = (model_dir / "chat_template.jinja").read_text()
    out = []
    for case in cases:
        ids = tokenizer.encode(render_jinja(template, case["messages"], add_generation_prompt=True))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + MAX_NEW_TOKENS, do_sample=False,
                                  repetition_penalty=REPETITION_PENALTY)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        tokens = []
        while not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        out.append(tokenizer.decode(tokens))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, required=True, help="the run's cases.jsonl")
    parser.add_argument("builds", nargs="+", metavar="LABEL=DIR", help="the FP32 build first")
    args = parser.parse_args()
    cases = [c for c in load_cases(args.cases) if "tools" not in c and "expect" in c]
    builds = dict(item.split("=", 1) for item in args.builds)
    passed = {label: [judge(a, c["expect"])[0] for a, c in zip(answers(Path(d), cases), cases, strict=True)]
              for label, d in builds.items()}
    reference = next(iter(passed.values()))
    print("| build | cases passed | FP32 passes, build fails |")
    print("|---|---|---|")
    for label, row in passed.items():
        lost = [c["id"] for c, ok, ref in zip(cases, row, reference, strict=True) if ref and not ok]
        print(f"| {label} | {sum(row)}/{len(row)} | {', '.join(lost) or 'none'} |")
    print(json.dumps({label: dict(zip([c["id"] for c in cases], row, strict=True)) for label, row in passed.items()}))


if __name__ == "__main__":
    main()
