"""Benchmark: ``slmops serve`` under concurrent clients, side by side with llama.cpp's native ``llama-server``.

Both serve the same model (ours: the registered INT4 build; llama.cpp: the Q4_0 GGUF of the same
source) to the official async ``openai`` client: at 1, 4, 8 and 16 concurrent clients each
client sends ``--requests`` streamed greedy requests (a different prompt per client) that
generate exactly ``--max-tokens`` tokens (ours through :func:`foundry.fixed_length_registration`,
llama-server with ``ignore_eos``). Rounds alternate which server goes first; per level the
table has the medians over rounds of requests/s, p50 latency and p50 time to first token (TTFT),
and their ratios ours / llama-server. ``today`` is our endpoint with ``--batch-size 0`` (each
request on Foundry Local in turn, as before batching), measured at one client. Every answer of
ours is compared with the same prompt's answer asked alone. Targets (pass/warn/fail):

* requests/s at 8 and 16 clients at least 1.0x llama-server's;
* p50 TTFT at 8 clients within 3x our single-client TTFT;
* one client within 5% of ``today`` (requests/s);
* no errors and no changed answer.

Usage::

    .venv/bin/python benchmarks/llama_cpp_native.py --setup     # llama-server, once (minutes)
    .venv/bin/python benchmarks/serve_load.py --gguf Q4_0.gguf [--rounds 5] [--markdown /tmp/serve.md]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama_cpp_native import require_tools, tools_root
from report_md import append, section

from slmops.toolkit.endpoint.cli import background, free_port
from slmops.toolkit.endpoint.options import DEFAULT_BATCH_SIZE, DEFAULT_POLICY
from slmops.toolkit.runtimes import foundry
from slmops.toolkit.runtimes.batching import Policy
from slmops.toolkit.runtimes.foundry_session import find_model

PROMPTS = ("Name a colour.", "Say hello in French.", "What is two plus two?", "Name a planet.",
           "Give me a fruit.", "Name an ocean.", "Say something kind.", "Name a tree.",
           "Describe the sea.", "Name a bird.", "What is a river?", "Say goodbye in Spanish.",
           "Name a metal.", "What is rain?", "Name a flower.", "Count to five.")


async def _client(client, model: str, prompt: str, requests: int, max_tokens: int, extra: dict,
                  out: list[dict]) -> None:
    for _ in range(requests):
        start = time.perf_counter()
        first, text, error = None, [], None
        try:
            stream = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
                stream=True, extra_body=extra)
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter()
                    text.append(chunk.choices[0].delta.content)
        except Exception as exc:  # noqa: BLE001 (counted and shown: the benchmark's finding)
            error = f"{type(exc).__name__}: {exc}"
        end = time.perf_counter()
        out.append({"prompt": prompt, "text": "".join(text), "latency_s": end - start,
                    "ttft_s": (first or end) - start, "error": error})


async def _level(url: str, model: str, clients: int, requests: int, max_tokens: int, extra: dict) -> dict:
    """One concurrency level against one server: requests/s, p50 latency and TTFT (ms), errors, the answers."""
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    results: list[dict] = []
    start = time.perf_counter()
    await asyncio.gather(*(_client(client, model, PROMPTS[i % len(PROMPTS)], requests, max_tokens, extra, results)
                           for i in range(clients)))
    wall = time.perf_counter() - start
    await client.close()
    ok = [r for r in results if r["error"] is None]
    return {"rps": len(ok) / wall, "wall_s": wall, "p50_ms": statistics.median(r["latency_s"] * 1000 for r in ok) if ok else 0.0,
            "ttft_ms": statistics.median(r["ttft_s"] * 1000 for r in ok) if ok else 0.0,
            "errors": [r["error"] for r in results if r["error"]], "answers": [(r["prompt"], r["text"]) for r in ok]}


class LlamaServer:
    """``llama-server`` on ``gguf`` in a child process (``-np`` slots, continuous batching, ``threads`` threads)."""

    def __init__(self, binary: Path, gguf: Path, slots: int, threads: int, context: int, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.command = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port),
                        "-np", str(slots), "-cb", "-t", str(threads), "-c", str(context * slots)]
        self.log = log.open("w")
        self.proc = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 120
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > end:
                sys.exit(f"llama-server did not start (see {log}): {' '.join(self.command)}")
            time.sleep(0.2)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def default_gguf(model: str) -> Path:
    """The Q4_0 GGUF of ``model``'s source beside the llama.cpp tools (``<source folder>-q4_0.gguf``)."""
    folder = Path(find_model(model).get_path())
    source = json.loads((folder / "manifest.json").read_text()).get("source_path", "")
    return tools_root() / f"{Path(source).name}-q4_0.gguf"


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _verdict(ok: bool, close: bool = False) -> str:
    return "pass" if ok else "warn" if close else "fail"


def engine_counters(url: str, model: str) -> dict[str, float]:
    """Our endpoint's batch engine counters for ``model`` from its ``/metrics`` (see ``metrics.EngineCounters``):
    seconds by phase, prefill runs, decode steps, prefilled positions, and the rows of all decode steps."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == "slmops_engine_seconds_total":
                out[sample.labels["phase"]] = sample.value
            elif sample.name == "slmops_engine_runs_total":
                out[f"{sample.labels['kind']} runs"] = sample.value
            elif sample.name == "slmops_prefill_positions_total":
                out["positions"] = sample.value
            elif sample.name == "slmops_batch_size_sum":
                out["rows"] = sample.value
    return out


PHASES = ("prefill", "decode", "pick", "other", "idle")


def _round(servers: dict, levels: list[int], args, round_: int, out: dict) -> None:
    """One round: every level on every server, the servers' order alternating by round and level; ours with its
    engine's counters over the level (where its time went)."""
    for level in levels:
        names = [name for name in servers if name != "today" or level == 1]
        order = names if (round_ + level) % 2 == 0 else names[::-1]
        for name in order:
            url, model, extra = servers[name]
            before = engine_counters(url, model) if name == "ours" else {}
            result = asyncio.run(_level(url, model, level, args.requests, args.max_tokens, extra))
            if name == "ours":
                after = engine_counters(url, model)
                result["engine"] = {key: after[key] - before.get(key, 0.0) for key in after}
            out.setdefault((name, level), []).append(result)


def _profile(runs: dict, levels: list[int]) -> tuple[list[str], list[list]]:
    """Where ours' wall time went at each level (medians over rounds): the engine thread's seconds by phase
    (prefill and decode: ONNX Runtime runs; pick: choosing and handing over tokens; other: admission, masks,
    prefix copies; idle: nothing to run), its prefill runs and decode steps, rows per step, positions per run."""
    header = ["clients", "wall s", *(f"{phase} s" for phase in PHASES), "prefill runs", "positions/run",
              "decode steps", "rows/step", "ms/step"]
    rows = []
    for level in levels:
        rs = runs[("ours", level)]
        med = {key: statistics.median(r["engine"].get(key, 0.0) for r in rs) for key in rs[0]["engine"]}
        wall = statistics.median(r["wall_s"] for r in rs)
        steps, prefills = med.get("decode runs", 0.0), med.get("prefill runs", 0.0)
        rows.append([level, f"{wall:.2f}", *(f"{med.get(phase, 0.0):.2f}" for phase in PHASES), f"{prefills:.0f}",
                     f"{med.get('positions', 0.0) / prefills:.1f}" if prefills else "-", f"{steps:.0f}",
                     f"{med.get('rows', 0.0) / steps:.1f}" if steps else "-",
                     f"{1000 * med.get('decode', 0.0) / steps:.1f}" if steps else "-"])
    return header, rows


def _summary(runs: dict, levels: list[int], alone: dict[str, str]) -> tuple[list[list], list[str]]:
    """The table's rows (medians over rounds) and the targets' verdict lines."""
    med = {key: {m: statistics.median(r[m] for r in rs) for m in ("rps", "p50_ms", "ttft_ms")}
           for key, rs in runs.items()}
    rows = []
    for level in levels:
        ours, theirs = med[("ours", level)], med[("llama-server", level)]
        errors = sum(len(r["errors"]) for r in runs[("ours", level)])
        their_errors = sum(len(r["errors"]) for r in runs[("llama-server", level)])
        changed = sum(text != alone[prompt] for r in runs[("ours", level)] for prompt, text in r["answers"])
        rows.append([level, f"{ours['rps']:.2f}", f"{theirs['rps']:.2f}", f"{_ratio(ours['rps'], theirs['rps']):.2f}",
                     f"{_ratio(ours['p50_ms'], theirs['p50_ms']):.2f}", f"{ours['ttft_ms']:.0f}",
                     f"{theirs['ttft_ms']:.0f}", their_errors, errors, changed])
    lines = []
    for level in (8, 16):
        if level in levels:
            ratio = _ratio(med[("ours", level)]["rps"], med[("llama-server", level)]["rps"])
            lines.append(f"requests/s at {level} clients {ratio:.2f}x llama-server's (target >= 1.0): "
                         f"{_verdict(ratio >= 1.0, ratio >= 0.9)}")
    if 8 in levels and 1 in levels:
        ttft = _ratio(med[("ours", 8)]["ttft_ms"], med[("ours", 1)]["ttft_ms"])
        lines.append(f"p50 TTFT at 8 clients {ttft:.2f}x one client's (target <= 3): {_verdict(ttft <= 3, ttft <= 4)}")
    if ("today", 1) in med:
        one = _ratio(med[("ours", 1)]["rps"], med[("today", 1)]["rps"])
        lines.append(f"one client {one:.3f}x today's requests/s (batch size 0; target >= 0.95): "
                     f"{_verdict(one >= 0.95, one >= 0.9)}")
    bad = sum(row[-1] + row[-2] for row in rows)
    lines.append(f"our errors and changed answers: {bad} (target 0): {_verdict(bad == 0)}")
    return rows, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-int4", help="registered model (default smollm2-int4)")
    parser.add_argument("--gguf", type=Path, help="llama-server's GGUF (default: <source folder>-q4_0.gguf beside "
                        "the llama.cpp tools)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--requests", type=int, default=3, help="requests per client per level (default 3)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens each answer generates (default 64)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="ours (slmops serve)")
    parser.add_argument("--schedule", default=DEFAULT_POLICY, choices=list(Policy), help="ours")
    parser.add_argument("--slots", type=int, default=8, help="llama-server's -np (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="llama-server's -t (ours: the registration's)")
    parser.add_argument("--no-today", action="store_true", help="skip the batch-size-0 baseline")
    parser.add_argument("--markdown", metavar="FILE", help="append the table as a dated section of the benchmarks page")
    args = parser.parse_args()
    tools = require_tools()
    gguf = args.gguf or default_gguf(args.model)
    if not gguf.is_file():
        sys.exit(f"{gguf} does not exist: make the Q4_0 GGUF of the model's source (benchmarks/llama_cpp.py makes "
                 "the quants) and pass --gguf PATH")
    log_dir = tools_root() / "serve-load-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    runs: dict = {}
    with foundry.fixed_length_registration(args.model) as fixed, contextlib.ExitStack() as stack:
        ours = stack.enter_context(background([fixed], batch_size=args.batch_size, policy=args.schedule,
                                                    max_queue=256, log_path=log_dir / "ours.log"))
        servers = {"ours": (ours.url, fixed, {"seed": 0}), "llama-server": (None, "q4_0", {"ignore_eos": True})}
        if not args.no_today:
            today = stack.enter_context(background([fixed], batch_size=0, max_queue=256,
                                                         log_path=log_dir / "today.log"))
            servers["today"] = (today.url, fixed, {"seed": 0})
        llama = LlamaServer(tools.server, gguf, args.slots, args.threads, 512, log_dir / "llama-server.log")
        stack.callback(llama.stop)
        servers["llama-server"] = (llama.url, "q4_0", {"ignore_eos": True})
        # Each prompt's answer with nobody else asking: the reference for every concurrent answer.
        alone = {prompt: asyncio.run(_alone(ours.url, fixed, prompt, args.max_tokens)) for prompt in PROMPTS}
        print(f"{args.model} (ours: batch size {args.batch_size}, {args.schedule}) vs {gguf.name} (llama-server "
              f"-np {args.slots} -cb -t {args.threads}): {args.requests} streamed greedy requests per client, "
              f"{args.max_tokens} tokens each, {args.rounds} alternated rounds, medians", flush=True)
        for round_ in range(args.rounds):
            _round(servers, args.clients, args, round_, runs)
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    rows, lines = _summary(runs, args.clients, alone)
    header = ["clients", "ours req/s", "llama-server req/s", "req/s ours/llama", "p50 latency ours/llama",
              "ours TTFT p50 ms", "llama TTFT p50 ms", "llama errors", "our errors",
              "changed answers"]
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(str(cell) for cell in row))
    if ("today", 1) in runs:
        print(f"today (batch size 0), one client: {statistics.median(r['rps'] for r in runs[('today', 1)]):.2f} req/s")
    for (name, level), rs in sorted(runs.items()):
        for error in sorted({e for r in rs for e in r["errors"]})[:3]:
            print(f"error ({name}, {level} clients): {error}")
    print("\n".join(lines))
    profile_header, profile_rows = _profile(runs, args.clients)
    print("where ours' time went (the engine's thread, medians over rounds):")
    print(" | ".join(profile_header))
    for row in profile_rows:
        print(" | ".join(str(cell) for cell in row))
    append(args.markdown, section("Serving under load: slmops serve and llama-server", header, rows,
                                  note="; ".join(lines)))


async def _alone(url: str, model: str, prompt: str, max_tokens: int) -> str:
    out: list[dict] = []
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0)
    await _client(client, model, prompt, 1, max_tokens, {"seed": 0}, out)
    await client.close()
    return out[0]["text"]


if __name__ == "__main__":
    main()
