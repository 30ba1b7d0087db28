"""Benchmark: ``slmops serve`` under concurrent clients, with the official async ``openai`` client.

Starts the endpoint for one registered model in its own process, then for 1, 4 and 8
concurrent clients sends ``--requests`` chat requests per client (streamed, greedy, a
different prompt per client so answers can be told apart) and prints, per level:
requests and generated tokens per second, p50/p95 request latency, p50 time to first
token, errors, and throughput as a ratio to one client measured in the same run (the
machines here are shared and noisy). Every answer is compared with the same prompt's
answer from one client alone: the endpoint serves one generation at a time per model, so
concurrency must never change an answer. Usage::

    .venv/bin/python benchmarks/serve_load.py                       # smollm2-int4 (run `make demo` first)
    .venv/bin/python benchmarks/serve_load.py --model smollm2-fp32 --requests 20 --max-tokens 64
    .venv/bin/python benchmarks/serve_load.py --markdown /tmp/serve.md   # also a section for docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report_md import append, section

from slmops.toolkit import endpoint as serve

PROMPTS = ("Name a colour.", "Say hello in French.", "What is two plus two?", "Name a planet.",
           "Give me a fruit.", "Name an ocean.", "Say something kind.", "Name a tree.")


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _client(client, model: str, prompt: str, requests: int, max_tokens: int, out: list[dict]) -> None:
    for _ in range(requests):
        start = time.perf_counter()
        first, text, tokens, error = None, [], 0, None
        try:
            stream = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
                seed=0, stream=True, stream_options={"include_usage": True})
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter()
                    text.append(chunk.choices[0].delta.content)
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
        except Exception as exc:  # noqa: BLE001 (counted and shown: the benchmark's finding)
            error = f"{type(exc).__name__}: {exc}"
        end = time.perf_counter()
        out.append({"prompt": prompt, "text": "".join(text), "tokens": tokens, "latency_s": end - start,
                    "ttft_s": (first or end) - start, "error": error})


async def _level(endpoint, model: str, clients: int, requests: int, max_tokens: int) -> tuple[list[dict], float]:
    import openai

    client = openai.AsyncOpenAI(base_url=endpoint.url, api_key=endpoint.api_key, max_retries=0, timeout=600)
    results: list[dict] = []
    start = time.perf_counter()
    await asyncio.gather(*(_client(client, model, PROMPTS[i % len(PROMPTS)], requests, max_tokens, results)
                           for i in range(clients)))
    wall = time.perf_counter() - start
    await client.close()
    return results, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-int4", help="registered model (default smollm2-int4)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests", type=int, default=20, help="requests per client (default 20)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--markdown", metavar="FILE", help="append the levels as a dated section of the benchmarks page")
    args = parser.parse_args()
    rows = []

    with serve.background([args.model]) as endpoint:
        # Each prompt's answer with nobody else asking: the reference for every concurrent answer.
        alone = {prompt: asyncio.run(_one(endpoint, args.model, prompt, args.max_tokens)) for prompt in PROMPTS}
        print(f"{args.model}: {args.requests} streamed requests per client, {args.max_tokens} tokens max, greedy")
        print(f"{'clients':>7} {'req/s':>7} {'tok/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'ttft p50':>9} "
              f"{'errors':>6} {'changed':>7} {'x 1 client':>10}")
        base = None
        for clients in args.clients:
            results, wall = asyncio.run(_level(endpoint, args.model, clients, args.requests, args.max_tokens))
            ok = [r for r in results if r["error"] is None]
            latencies = [r["latency_s"] * 1000 for r in ok] or [0.0]
            tps = sum(r["tokens"] for r in ok) / wall
            base = base or tps
            changed = sum(r["text"] != alone[r["prompt"]] for r in ok)
            print(f"{clients:>7} {len(ok) / wall:>7.2f} {tps:>7.1f} {statistics.median(latencies):>8.0f} "
                  f"{_quantile(latencies, 0.95):>8.0f} {statistics.median(r['ttft_s'] * 1000 for r in ok):>9.0f} "
                  f"{len(results) - len(ok):>6} {changed:>7} {tps / base:>10.2f}")
            rows.append([clients, f"{len(ok) / wall:.2f}", f"{tps:.1f}", f"{statistics.median(latencies):.0f}",
                         f"{_quantile(latencies, 0.95):.0f}", len(results) - len(ok), changed, f"{tps / base:.2f}"])
            for r in results:
                if r["error"]:
                    print(f"  error: {r['error']}")
    append(args.markdown, section(
        "Serving under load", ["clients", "requests/s", "tokens/s", "p50 latency ms", "p95 latency ms", "errors",
                               "answers changed", "tokens/s vs 1 client"], rows,
        note=f"`{args.model}` behind `slmops serve`, the async `openai` client, {args.requests} streamed greedy "
             f"requests per client, at most {args.max_tokens} tokens each."))


async def _one(endpoint, model: str, prompt: str, max_tokens: int) -> str:
    import openai

    client = openai.AsyncOpenAI(base_url=endpoint.url, api_key=endpoint.api_key, max_retries=0)
    out: list[dict] = []
    await _client(client, model, prompt, 1, max_tokens, out)
    await client.close()
    return out[0]["text"]


if __name__ == "__main__":
    main()
