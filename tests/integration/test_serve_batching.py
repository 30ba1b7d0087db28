"""Continuous batching in ``slmops serve``: the engine on a tiny random model, and the endpoint over it.

Greedy answers decoded together must be the answers asked alone. Batched numerics may differ
from a batch of one in the last bits (a MatMul over more rows sums in another order), so where a
token differs the test shows that the step was a near tie at the logit level, and fails otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from slmops.toolkit.cli import app
from slmops.toolkit.core.errors import InputError
from slmops.toolkit.endpoint.batched import StopText
from slmops.toolkit.endpoint.cli import background, run
from slmops.toolkit.runtimes.batching import BatchEngine, Policy
from slmops.toolkit.runtimes.foundry_session import find_model
from slmops.toolkit.stages import register
from slmops.toolkit.weights import lm_head

MODEL = "tiny-batch"
NEAR_TIE = 1e-3  # logits this close may swap between a batch of one and a bigger batch


def _prompts(count: int) -> list[list[int]]:
    """Prompts of different lengths and tokens (ids well inside the tiny model's vocabulary)."""
    return [[5 + (7 * i + j) % 200 for j in range(6 + 3 * i)] for i in range(count)]


def _generate(engine: BatchEngine, prompts: list[list[int]], max_new: int = 24, stagger_s: float = 0.0,
              **extra) -> list[tuple[list[int], str, list[float]]]:
    """Each prompt's greedy tokens, finish reason and step gaps, the prompts submitted together (or staggered)."""
    results: list = [None] * len(prompts)
    done = threading.Semaphore(0)
    sequences = []
    for i, prompt in enumerate(prompts):
        tokens: list[int] = []

        def emit(token, reason, i=i, tokens=tokens):
            if token is not None:
                tokens.append(token)
            else:
                results[i] = (tokens, reason)
                done.release()

        sampling = dataclasses.replace(engine.settings.sampling(max_new, 0.0), **extra)
        sequences.append(engine.submit(prompt, sampling, emit, record_gaps=True))
        time.sleep(stagger_s)
    for _ in prompts:
        assert done.acquire(timeout=120)
    return [(tokens, reason, sequence.gaps) for (tokens, reason), sequence in zip(results, sequences, strict=True)]


def _hold_engine(engine: BatchEngine, prompt: list[int]) -> tuple[object, threading.Event]:
    """Submit ``prompt`` as a sequence that never ends by itself and hold the engine's thread at its first token
    until the event returned is set; returns the running sequence (cancel it when done) and that event."""
    held, release = threading.Event(), threading.Event()

    def hold(token, reason) -> None:
        if token is not None and not held.is_set():
            held.set()
            assert release.wait(60)

    running = engine.submit(prompt, dataclasses.replace(engine.settings.sampling(10**5, 0.0), min_length=10**6), hold)
    assert held.wait(30)
    return running, release


def _same_or_near_tie(alone: tuple, batched: tuple) -> str:
    """``"same"``, or where they part a near tie (else the test fails with the step's margins)."""
    (a, _, a_gaps), (b, _, b_gaps) = alone, batched
    if a == b:
        return "same"
    step = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    margin = min(a_gaps[step], b_gaps[step])
    assert margin < NEAR_TIE, f"step {step}: {a[step]} alone, {b[step]} batched, margin {margin:.2e} is no near tie"
    return f"near tie at step {step} (margin {margin:.1e})"


@pytest.fixture(scope="module")
def engine(tiny_int4: Path):
    running = BatchEngine(tiny_int4, batch_size=4)
    yield running
    running.close()


@pytest.mark.parametrize("stagger_s", [0.0, 0.01], ids=["together", "joining-mid-decode"])
def test_greedy_tokens_decoded_together_equal_each_asked_alone(engine: BatchEngine, stagger_s: float) -> None:
    prompts = _prompts(7)  # more than the batch: some wait for a row, then join between steps
    alone = [_generate(engine, [prompt])[0] for prompt in prompts]
    together = _generate(engine, prompts, stagger_s=stagger_s)
    outcomes = [_same_or_near_tie(a, b) for a, b in zip(alone, together, strict=True)]
    print(outcomes)
    assert outcomes.count("same") >= len(prompts) - 1
    assert [reason for _, reason, _ in together] == [reason for _, reason, _ in alone]


@pytest.fixture(scope="module")
def pruned_int4(tiny_int4: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as registration serves it: the LM head on the last position only."""
    folder = tmp_path_factory.mktemp("pruned") / "int4"
    shutil.copytree(tiny_int4, folder)
    assert lm_head.serve_last_position(folder)
    return folder


@pytest.mark.parametrize("graph", ["all-positions", "last-position"])
def test_prompts_of_different_lengths_are_prefilled_in_one_run_and_answer_as_alone(
        tiny_int4: Path, pruned_int4: Path, graph: str) -> None:
    """Five prompts of 6 to 18 tokens that wait together are prefilled in one run (right-padded) beside a running
    sequence, and each answers as asked alone, on the full graph and on the pruned one (whose last position is
    the padded batch's, not each prompt's, unless the engine gives each row its own)."""
    engine = BatchEngine(tiny_int4 if graph == "all-positions" else pruned_int4, batch_size=8,
                         prefill_positions=5 * 18, prefix_cache_mib=0)  # asked alone first: no kept prompts here
    try:
        prompts = _prompts(5)
        alone = [_generate(engine, [prompt])[0] for prompt in prompts]
        running, release = _hold_engine(engine, _prompts(6)[5])
        before, together = engine.prefills, []
        waiter = threading.Thread(target=lambda: together.extend(_generate(engine, prompts)))
        waiter.start()
        end = time.monotonic() + 30
        while engine.inbox.qsize() < len(prompts) and time.monotonic() < end:
            time.sleep(0.001)
        release.set()
        waiter.join(120)
        running.cancel()
        assert engine.prefills - before == 1, f"{engine.prefills - before} prefill runs for {len(prompts)} prompts"
        outcomes = [_same_or_near_tie(a, b) for a, b in zip(alone, together, strict=True)]
        print(outcomes)
        assert outcomes.count("same") >= len(prompts) - 1
    finally:
        engine.close()


def test_prompts_waiting_together_past_the_run_cap_are_prefilled_a_run_per_step(tiny_int4: Path) -> None:
    """Six prompts that wait together, twice what one prefill run holds (:data:`PREFILL_POSITIONS`), are prefilled in
    two runs with a decode step of the running sequence between them: the first run's first tokens do not wait for
    the second run (before, every waiting prompt was prefilled in one run ahead of the next decode step)."""
    engine = BatchEngine(tiny_int4, batch_size=8, prefix_cache_mib=0)  # the prompts share the running one's prefix
    try:
        firsts = {}
        running, release = _hold_engine(engine, _prompts(1)[0])
        before, length = engine.prefills, 21  # three prompts of 21 fit a run of PREFILL_POSITIONS (64), not four
        for i in range(6):
            engine.submit([5 + (11 * i + j) % 200 for j in range(length)], engine.settings.sampling(3, 0.0),
                          lambda token, reason, i=i: firsts.setdefault(i, (engine.prefills - before, engine.steps)))
        end = time.monotonic() + 30
        while engine.inbox.qsize() < 6 and time.monotonic() < end:
            time.sleep(0.001)
        release.set()
        while len(firsts) < 6 and time.monotonic() < end:
            time.sleep(0.001)
        running.cancel()
        assert [firsts[i][0] for i in range(6)] == [1, 1, 1, 2, 2, 2], firsts
        assert firsts[3][1] > firsts[0][1], firsts  # a decode step between the two runs
    finally:
        engine.close()


@pytest.mark.parametrize("graph", ["all-positions", "last-position"])
def test_prompts_sharing_a_kept_prefix_prefill_only_the_rest_and_answer_as_alone(
        tiny_int4: Path, pruned_int4: Path, graph: str) -> None:
    """Prompts that begin with the same 24 tokens (a chat template's system prompt) take them from the prefix cache:
    after the first, only each prompt's own tokens are prefilled, and each answers as asked alone without it."""
    folder = tiny_int4 if graph == "all-positions" else pruned_int4
    prefix = [5 + (3 * j) % 190 for j in range(24)]
    prompts = [prefix + [100 + 17 * i + j for j in range(3 + 2 * i)] for i in range(5)]
    plain = BatchEngine(folder, batch_size=4, prefix_cache_mib=0)
    try:
        alone = [_generate(plain, [prompt])[0] for prompt in prompts]
        assert plain.prefilled == sum(map(len, prompts))
    finally:
        plain.close()
    engine = BatchEngine(folder, batch_size=4, prefix_cache_mib=64)
    try:
        first = _generate(engine, prompts[:1])
        assert engine.prefilled == len(prompts[0])
        rest = _generate(engine, prompts[1:], stagger_s=0.01)
        assert engine.prefilled - len(prompts[0]) == sum(len(prompt) - len(prefix) for prompt in prompts[1:])
        outcomes = [_same_or_near_tie(a, b) for a, b in zip(alone, first + rest, strict=True)]
        print(outcomes)
        assert outcomes.count("same") >= len(prompts) - 1
        assert [reason for _, reason, _ in first + rest] == [reason for _, reason, _ in alone]
        before = engine.prefilled
        again = _generate(engine, prompts[2:3])  # the whole prompt kept with its first logits: nothing runs again
        assert engine.prefilled - before == 0
        assert again[0][:2] == (first + rest)[2][:2]
    finally:
        engine.close()


@pytest.mark.parametrize("graph", ["all-positions", "last-position"])
def test_prompts_asked_again_whole_join_together_without_a_run_and_answer_as_before(
        tiny_int4: Path, pruned_int4: Path, graph: str) -> None:
    """Prompts asked again whole (a client's retry, a benchmark's rounds) take their keys, values and first token's
    logits from the prefix cache: five asked together all join with no prefill run, and each answers token for token
    as the first time (before, each ran its last two positions alone, a prompt-graph run apiece)."""
    engine = BatchEngine(tiny_int4 if graph == "all-positions" else pruned_int4, batch_size=8, prefix_cache_mib=64)
    try:
        prompts = _prompts(5)
        before = [_generate(engine, [prompt])[0] for prompt in prompts]
        runs, admitted = engine.prefills, engine.kept_admissions
        again = _generate(engine, prompts)
        assert engine.prefills - runs == 0
        assert engine.kept_admissions - admitted == len(prompts)
        assert [tokens for tokens, _, _ in again] == [tokens for tokens, _, _ in before]
        assert [reason for _, reason, _ in again] == [reason for _, reason, _ in before]
        mixed = _generate(engine, [prompts[0], [7, 8, 9, 10, 11, 12, 13], prompts[3]])  # a new prompt among them
        assert engine.prefills - runs == 1
        assert [mixed[0][0], mixed[2][0]] == [before[0][0], before[3][0]]
    finally:
        engine.close()


def test_decode_first_admits_one_per_step_and_answers_as_alone(tiny_int4: Path) -> None:
    engine = BatchEngine(tiny_int4, batch_size=4, policy=Policy.DECODE_FIRST)
    try:
        prompts = _prompts(6)
        alone = [_generate(engine, [prompt])[0] for prompt in prompts]
        together = _generate(engine, prompts, stagger_s=0.01)
        outcomes = [_same_or_near_tie(a, b) for a, b in zip(alone, together, strict=True)]
        assert outcomes.count("same") >= len(prompts) - 1, outcomes
        assert [reason for _, reason, _ in together] == [reason for _, reason, _ in alone]
    finally:
        engine.close()


def test_tokens_are_handed_over_as_the_next_run_starts(engine: BatchEngine) -> None:
    """A step's tokens reach their readers just before the next ONNX Runtime run (which lets go of the interpreter),
    not while the engine's thread still admits sequences and builds that run's inputs; the last ones, and the end,
    before the thread waits for work (before, each token was handed over as the step's picking ended)."""
    handed, done = [], threading.Event()

    def emit(token, reason) -> None:
        frame, names = sys._getframe(1), set()
        while frame is not None:
            names.add(frame.f_code.co_name)
            frame = frame.f_back
        handed.append((token, reason, "_run" in names))
        if reason is not None:
            done.set()

    fresh = [200 - j for j in range(9)]  # asked nowhere else: not kept whole (see the test after)
    engine.submit(fresh, dataclasses.replace(engine.settings.sampling(6, 0.0), min_length=10**6), emit)
    assert done.wait(60)
    assert [reason for _, reason, _ in handed] == [None] * 6 + ["length"]
    assert [within for _, _, within in handed] == [True] * 5 + [False] * 2, handed


def test_a_prompt_kept_whole_gets_its_first_token_while_the_engine_is_busy(tiny_int4: Path) -> None:
    """A prompt asked again whole gets its first token at submit, from the kept logits, while the engine's thread is
    still in a step (held here), then joins the batch and answers as the first time; a new prompt waits for the
    step (before, a kept prompt's first token also waited for the step to end)."""
    engine = BatchEngine(tiny_int4, batch_size=4, prefix_cache_mib=64)
    try:
        prompt, other = _prompts(3)[1], _prompts(3)[2]
        [before] = _generate(engine, [prompt])
        running, release = _hold_engine(engine, _prompts(5)[4])
        firsts: dict[str, list] = {"kept": [], "new": []}
        again = engine.submit(prompt, engine.settings.sampling(24, 0.0),
                              lambda token, reason: firsts["kept"].append((token, reason)))
        engine.submit(other, engine.settings.sampling(3, 0.0), lambda token, reason: firsts["new"].append(token))
        time.sleep(0.2)
        assert firsts["kept"] == [(before[0][0], None)] and firsts["new"] == [], firsts
        release.set()
        end = time.monotonic() + 30
        while (not firsts["kept"] or firsts["kept"][-1][1] is None) and time.monotonic() < end:
            time.sleep(0.001)
        running.cancel()
        assert [token for token, _ in firsts["kept"][:-1]] == before[0]
        assert firsts["kept"][-1] == (None, before[1]) and again.length > len(prompt)
    finally:
        engine.close()


def test_end_of_sequence_waits_for_min_length_and_max_tokens_end_with_length(engine: BatchEngine) -> None:
    [(tokens, reason, _)] = _generate(engine, _prompts(1), max_new=40, min_length=10**6)
    assert len(tokens) == 40 and reason == "length"


def test_a_cancelled_sequence_frees_its_row_within_one_decode_step(tiny_int4: Path) -> None:
    engine = BatchEngine(tiny_int4, batch_size=1)
    try:
        started, ended, first_of_next = threading.Event(), [], []
        leaving = engine.submit(_prompts(1)[0], dataclasses.replace(engine.settings.sampling(10**5, 0.0),
                                                                    min_length=10**6),
                                lambda token, reason: ended.append(reason) if reason else started.set())
        assert started.wait(30)
        waiting = engine.submit(_prompts(2)[1], engine.settings.sampling(4, 0.0),
                                lambda token, reason: first_of_next.append(engine.steps) if token is not None else 0)
        end = time.monotonic() + 30
        while engine.steps < 5 and time.monotonic() < end:  # a few steps, well before the row's capacity
            time.sleep(0.0005)
        assert not first_of_next  # the one row is taken
        cancelled_at = engine.steps
        leaving.cancel()
        end = time.monotonic() + 30
        while not first_of_next and time.monotonic() < end:
            time.sleep(0.001)
        assert ended == ["cancelled"] and first_of_next[0] - cancelled_at <= 2, (cancelled_at, first_of_next)
        waiting.cancel()
    finally:
        engine.close()


def test_stop_text_holds_back_a_possible_start_and_cuts_at_the_sequence() -> None:
    stop = StopText(["END", "\n\n"])
    assert stop.add("Hello E") == "Hello "  # "E" may begin "END"
    assert stop.add("x") == "Ex"
    assert stop.add("tra EN") == "tra "
    assert stop.add("D more") == "" and stop.stopped and stop.text == "Hello Extra "
    plain = StopText([])
    assert plain.add("a\n") == "a\n" and plain.rest() == ""


@pytest.fixture(scope="module")
def served_int4(tiny_int4: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as registration serves it: its LM head pruned, gate/up fused and the prompt graph whose 4-bit
    projections run as 8-bit ones in blocks of 128 (int8 compute)."""
    import json

    from slmops.toolkit.stages.register_prompt import serve_graphs

    folder = tmp_path_factory.mktemp("served") / "int4"
    shutil.copytree(tiny_int4, folder)
    assert lm_head.serve_last_position(folder)
    genai_config = json.loads((folder / "genai_config.json").read_text())
    assert serve_graphs(folder, genai_config)
    (folder / "genai_config.json").write_text(json.dumps(genai_config))
    return folder


def test_a_prompt_graph_whose_rows_change_each_other_prefills_each_prompt_whole_and_as_alone(served_int4: Path) -> None:
    """Registration's 8-bit prompt graph gives a row slightly other products beside other rows (int8 compute in
    blocks of 128), and greedy decoding carried that to other tokens: on the bundled fine-tune, 2 of 16 prompts
    whose rest was prefilled on a kept system prompt answered otherwise than the whole prompt. The engine runs
    such a graph one whole prompt per run (no run of several prompts, no rest of a prompt on a kept prefix), so
    every answer is the one asked alone."""
    from slmops.toolkit.runtimes.batch_sessions import rows_coupled

    assert rows_coupled(served_int4 / "model_prompt.onnx") and not rows_coupled(served_int4 / "model.onnx")
    engine = BatchEngine(served_int4, batch_size=8, prefill_positions=5 * 18, prefix_cache_mib=64)
    try:
        prompts = _prompts(5)
        alone = [_generate(engine, [prompt])[0][:2] for prompt in prompts]
        engine.prefixes.entries.clear()  # asked again below as new prompts, each sharing no kept whole prompt
        before, kept = engine.prefills, engine.kept_admissions
        engine.prefixes.store([*prompts[4][:-3], 1, 2, 3], "", [*engine.keys, *engine.values], 0)  # a shared prefix
        together = [answer[:2] for answer in _generate(engine, prompts)]
        assert engine.prefills - before == len(prompts), f"{engine.prefills - before} runs for {len(prompts)} prompts"
        assert engine.kept_admissions == kept and engine.prefixes.match(prompts[4], "") == 0
        assert together == alone
    finally:
        engine.close()


@pytest.fixture(scope="module")
def endpoints(tiny_int4: Path):
    """The batched endpoint (batch size 4) and today's (batch size 0: each request on Foundry Local in turn)."""
    register.register(tiny_int4, MODEL)
    with background([MODEL], batch_size=4) as batched, background([MODEL], batch_size=0) as single:
        yield batched, single


def test_concurrent_clients_get_their_answers_alone_and_foundry_locals(endpoints) -> None:
    """Batched answers equal the same requests asked alone, and Foundry Local's (the registration: template,
    stop tokens, penalty) in finish reason and usage. Their text is only counted against Foundry Local's: on
    this random model it matched 1 of 8 (its near-uniform logits tie often, and Foundry Local runs its own
    ONNX Runtime build), while on the bundled SmolLM2 INT4 every answer tried was the same text."""
    batched, single = endpoints
    prompts = [f"Item {i}: describe a {word}." for i, word in enumerate(["cat", "ship", "cloud", "stone", "tree",
                                                                           "lamp", "road", "bell"])]

    def ask(endpoint, prompt: str, **extra):
        return endpoint.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=12, temperature=0, **extra)

    foundry = [ask(single, p) for p in prompts]
    alone = [ask(batched, p) for p in prompts]

    async def together() -> list:
        client = openai.AsyncOpenAI(base_url=batched.url, api_key=batched.api_key, max_retries=0)
        try:
            return await asyncio.gather(*(client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=12, temperature=0)
                for p in prompts * 2))
        finally:
            await client.close()

    answers = asyncio.run(together())
    for answer, reference in zip(answers, alone * 2, strict=True):
        assert answer.choices[0].message.content == reference.choices[0].message.content
    for answer, reference in zip(alone, foundry, strict=True):
        assert answer.choices[0].finish_reason == reference.choices[0].finish_reason
        assert answer.usage.model_dump() == reference.usage.model_dump()
    same = [a.choices[0].message.content == f.choices[0].message.content for a, f in zip(alone, foundry, strict=True)]
    print(f"text equal to Foundry Local's: {sum(same)} of {len(same)}")
    stop = alone[0].choices[0].message.content[3:6]
    cut = ask(batched, prompts[0], stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].message.content
    text = httpx.get(batched.url.removesuffix("/v1") + "/metrics").text
    sizes = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name.startswith("slmops_batch_size")}
    assert sizes["slmops_batch_size_sum"] > sizes["slmops_batch_size_count"] > 0  # some steps decoded several


def test_serve_refuses_a_bad_batch_size_policy_or_prefix_cache_before_loading(
        endpoints, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(InputError, match="--batch-size"):
        run([MODEL], batch_size=-1)
    with pytest.raises(InputError, match="--schedule"):
        run([MODEL], policy="fastest")
    with pytest.raises(InputError, match=r"--prefix-cache-mib -1 is out of range: use a whole number of MiB from 0"):
        run([MODEL], prefix_cache_mib=-1)
    assert [str(p) for p in Policy] == ["prefill-first", "decode-first"]
    for bad in ("-1", "64.5", "many"):
        assert app.main(["serve", MODEL, "--prefix-cache-mib", bad]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("slmops:")]
        assert len(errors) == 1 and errors[0].startswith("slmops: error: argument --prefix-cache-mib:"), errors


def _engine_counters(endpoint) -> dict[str, float]:
    text = httpx.get(endpoint.url.removesuffix("/v1") + "/metrics").text
    return {f"{s.name}{sorted(s.labels.items())}": s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name.startswith(("slmops_engine", "slmops_prefill")) and s.labels["model"] == MODEL}


def test_prefix_cache_size_reaches_the_engine_and_the_engine_shows_its_time_on_metrics(endpoints) -> None:
    """``--prefix-cache-mib 0`` prefills a prompt asked again whole; the default keeps it with its first token's
    logits and runs nothing for it. ``/metrics`` counts the prefilled positions, prefill runs and decode steps, and the engine
    thread's seconds by phase (where a load's time goes)."""
    batched, _ = endpoints
    label = "[('model', 'tiny-batch')]"
    with background([MODEL], batch_size=4, prefix_cache_mib=0) as uncached:
        for endpoint, again in ((uncached, None), (batched, 0)):
            counters = [_engine_counters(endpoint)]
            for _ in range(2):
                answer = endpoint.client().chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "Name a colour, please."}], max_tokens=3,
                    temperature=0)
                counters.append(_engine_counters(endpoint))
            prompt = answer.usage.prompt_tokens
            delta = {key: counters[2][key] - counters[1][key] for key in counters[2]}  # the prompt asked again
            assert delta[f"slmops_prefill_positions_total{label}"] == (prompt if again is None else again)
            runs = {kind: delta[f"slmops_engine_runs_total[('kind', '{kind}'), ('model', 'tiny-batch')]"]
                    for kind in ("prefill", "decode")}
            # 3 tokens: the prefill's (none for a prompt kept whole: its kept logits), then two decode steps
            assert runs == {"prefill": 1 if again is None else 0, "decode": 2}, runs
            seconds = {phase: delta[f"slmops_engine_seconds_total[('model', 'tiny-batch'), ('phase', '{phase}')]"]
                       for phase in ("prefill", "decode", "pick", "other", "idle")}
            assert min(seconds.values()) >= 0 and seconds["decode"] > 0, seconds
            assert seconds["prefill"] > 0 if again is None else seconds["prefill"] == 0, seconds


def test_the_prompt_and_token_graphs_stop_their_threads_spinning_when_a_run_returns(endpoints) -> None:
    """The registered model prefills on its prompt graph and decodes on its token graph: two sessions, each with a
    thread pool. Left spinning after its run, one pool's threads hold the cores while the other's run (prefill runs
    and decode steps took up to twice as long under load; the benchmarks page), so both stop."""
    engine = BatchEngine(Path(find_model(MODEL).get_path()), batch_size=2)
    try:
        assert engine.prompt_session is not engine.session
        for session in (engine.session, engine.prompt_session):
            assert session.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"
        tokens = _generate(engine, _prompts(2), max_new=4, min_length=10**6)
        assert [reason for _, reason, _ in tokens] == ["length", "length"]
    finally:
        engine.close()


def test_a_prompt_asked_again_is_not_rendered_and_tokenized_again(endpoints, monkeypatch: pytest.MonkeyPatch) -> None:
    """A served request asks for its prompt's ids three times (admission, checks, generation), and a tokenizer's
    encode took about 1 ms on the event loop: recent prompts' ids are kept, the same ids as rendered anew."""
    from slmops.toolkit.domain import jinja_render
    from slmops.toolkit.runtimes.foundry import LoadedModel

    renders, render = [], jinja_render.render_jinja
    monkeypatch.setattr(jinja_render, "render_jinja", lambda *a, **k: renders.append(1) or render(*a, **k))
    ask = [{"role": "user", "content": "Name a colour, please."}]
    with LoadedModel(MODEL) as model:
        first = model.prompt_ids(ask)
        assert model.prompt_ids(ask) == first and model.prompt_tokens(ask) == len(first)
        assert len(renders) == 1
        other = model.prompt_ids([{"role": "user", "content": "Name a tree."}])
        assert len(renders) == 2 and other != first
    with LoadedModel(MODEL) as fresh:
        assert fresh.prompt_ids(ask) == first
