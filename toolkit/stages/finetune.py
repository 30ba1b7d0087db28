"""Stage 0: fine-tune a LoRA adapter on a small instruction dataset (peft, on CPU, seeded).

Most fine-tunes of small models are PEFT LoRA adapters over a base; this stage makes one,
so the demo deploys a real fine-tune and a user can reproduce its input
(``slmops finetune DATA.jsonl --base DIR --out ADAPTER``). The dataset is JSONL, one example
per line (see :mod:`slmops.toolkit.domain.datasets`): ``question`` and ``answer`` (the training
pair), ``paraphrase`` (a held-out wording, never trained on), ``expect`` (words a correct
answer contains), an optional ``id`` and ``format: "json"``.

Training runs in a child process (:mod:`slmops.toolkit.core.workers`) with one progress event per
step; the loss is computed on the answer tokens only, through the base's own chat template.
The adapter is written to a temporary folder and moved into place when complete; a folder
trained from the same data, base and settings is reused (its ``finetune.json`` says so).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from slmops.toolkit.core import artifacts, codec, settings, workers
from slmops.toolkit.core.errors import InputError
from slmops.toolkit.domain import packaged, tools
from slmops.toolkit.domain.datasets import BUNDLED_DATASET, Example, load_dataset
from slmops.toolkit.domain.results.finetune import (
    FINETUNE_RECORD,
    FinetuneRecord,
    FinetuneSettings,
    read_finetune,
    write_finetune,
)
from slmops.toolkit.domain.sources import BUNDLED_NAME, fingerprint
from slmops.toolkit.weights.checkpoints import inspect_source

RECORD = FINETUNE_RECORD
#: Steps of the bundled SmolLM2's demo fine-tune: the Veloria set with its tool examples (29) at
#: batch 4 is about 8 passes, as its 16 questions had at 36 steps.
BUNDLED_STEPS = 60


@dataclass(frozen=True)
class FinetuneSpec:
    """What to train.

    Attributes:
        data: The JSONL dataset (None: the bundled Veloria set).
        base: The base model's Hugging Face folder.
        out: Where the adapter folder goes.
        rank: LoRA rank ``r``; ``alpha`` is twice it.
        steps: Optimizer steps.
        batch: Examples per step (cycled through the dataset in a seeded order).
        learning_rate: AdamW's learning rate.
        seed: Seeds the order and the adapter's initialization, so a rerun gives the same adapter.
    """

    base: Path
    out: Path
    data: Path | None = None
    rank: int = 16
    steps: int = 36
    batch: int = 4
    learning_rate: float = 2e-3
    seed: int = 0

    def check(self) -> None:
        """Raise :class:`InputError` for a setting out of range."""
        for name, low, high in (("rank", 1, 256), ("steps", 1, 10_000), ("batch", 1, 256)):
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise InputError(f"--{name} {value!r} is out of range: use a whole number from {low} to {high}.")
        if not 0 < self.learning_rate <= 1:
            raise InputError(f"--learning-rate {self.learning_rate!r} is out of range: use a number in (0, 1].")
        if type(self.seed) is not int or not 0 <= self.seed < 2**31:
            raise InputError(f"--seed {self.seed!r} is out of range: use a whole number from 0 to {2**31 - 1}.")


@dataclass(frozen=True)
class FinetuneResult:
    """A trained (or reused) adapter.

    Attributes:
        adapter: The adapter folder (``adapter_config.json`` and weights).
        losses: Training loss per step.
        wall_s: Training time in seconds (0 when reused).
        reused: True when an adapter trained the same way was already there.
        examples: How many examples it was trained on.
    """

    adapter: Path
    losses: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    reused: bool = False
    examples: int = 0


def _key(spec: FinetuneSpec, examples: list[Example]) -> str:
    """What makes two trainings the same: the data, the base's files and the settings."""
    settings_part = {k: v for k, v in asdict(spec).items() if k not in ("base", "out", "data")}
    blob = json.dumps({"examples": [asdict(e) for e in examples], "base": fingerprint(spec.base),
                       "settings": settings_part, "answer_format": "template turn", "tool_protocol": "foundry-local-sdk 2.2.1"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def finetune(spec: FinetuneSpec, *, progress: bool = True) -> FinetuneResult:
    """Train a LoRA adapter on ``spec.data`` over ``spec.base``, or reuse one trained the same way.

    Raises:
        InputError: a bad dataset, base folder or setting, before anything is written.
        ToolFailedError: training failed (the message is its error; the log is kept).
    """
    spec.check()
    # The adapter's config names its base by this path: relative, it would mean another folder from elsewhere.
    spec = replace(spec, base=Path(spec.base).expanduser().resolve(),
                   data=Path(spec.data).expanduser().resolve() if spec.data else None)
    artifacts.check_replaceable(spec.out, "fine-tune", (RECORD,), {"base model": spec.base, "dataset": spec.data})
    examples = load_dataset(spec.data)
    inspect_source(spec.base)
    skipped = 0
    if tools.find_markers(spec.base) is None:  # no tool-call tokens: the tool examples cannot be learned
        skipped = sum(1 for e in examples if e.tools)
        examples = [e for e in examples if not e.tools]
    out = Path(spec.out).expanduser().resolve()
    key = _key(spec, examples)
    with artifacts.built_once(out, "this fine-tune"):
        record = read_finetune(out)
        if record is not None and record.key == key and (out / "adapter_config.json").is_file():
            return FinetuneResult(out, list(record.losses), 0.0, True, len(examples))
        return _train(spec, examples, out, key, skipped, progress=progress)


def _train(spec: FinetuneSpec, examples: list[Example], out: Path, key: str, skipped: int, *,
           progress: bool) -> FinetuneResult:
    """Train ``spec`` into ``out`` (a scratch folder swapped into place) and record it with ``key``."""
    from tqdm.auto import tqdm

    artifacts.remove_stale(out.parent)
    staging = artifacts.staging_dir(out, "training")
    bar = tqdm(total=spec.steps, desc="fine-tune (LoRA)", unit="step", disable=not progress)

    def on_event(event: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{event['loss']:.3f}")

    start = time.perf_counter()
    try:
        job = TrainJob(str(spec.base), str(staging), tuple(examples), spec.rank, spec.steps, spec.batch,
                       spec.learning_rate, spec.seed)
        losses = workers.run_worker("slmops.toolkit.stages.finetune", "train", codec.dump(job), name="LoRA fine-tune",
                                    idle_timeout=600, startup_s=120, on_event=on_event).result
        wall = time.perf_counter() - start
        write_finetune(staging, FinetuneRecord(
            key, str(spec.base), str(spec.data) if spec.data else BUNDLED_DATASET, len(examples), skipped,
            tuple(losses), round(wall, 1),
            FinetuneSettings(spec.rank, spec.steps, spec.batch, spec.learning_rate, spec.seed)))
        artifacts.swap_into_place(staging, out)
    finally:
        bar.close()
        shutil.rmtree(staging, ignore_errors=True)
    return FinetuneResult(out, losses, wall, False, len(examples))


def bundled_adapter(base: Path, *, progress: bool = True) -> FinetuneResult:
    """The demo's fine-tune: a LoRA adapter for ``base`` (the bundled SmolLM2 or a packaged model) on the Veloria set.

    Trained once (well under a minute here for SmolLM2) and kept beside the unpacked model; a
    packaged model's own settings (:attr:`~slmops.toolkit.domain.packaged.PackagedModel.finetune`) apply.
    """
    name = "smollm2" if base.name == BUNDLED_NAME else base.name.lower()
    key = packaged.packaged_key(base)
    tuned = dict(packaged.PACKAGED[key].finetune) if key else {}
    steps = int(tuned.pop("steps", BUNDLED_STEPS if base.name == BUNDLED_NAME else FinetuneSpec.steps))
    return finetune(FinetuneSpec(base=base, out=settings.models_dir() / f"{name}-veloria-lora", steps=steps, **tuned),
                    progress=progress)


def _answer_turn(tokenizer, messages: list[dict], answer: str, prompt: str) -> str:
    """The answer as the chat template closes an assistant turn (``<|im_end|>``, ``<end_of_turn>``, ``<|eot_id|>``).

    The model learns to end its answers with the marker its turns end in, which registration
    makes a stop token; the tokenizer's EOS is only the fallback, since many templates end a
    turn with another token (Gemma's ``<end_of_turn>`` against ``<eos>``).
    """
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
    if full.startswith(prompt) and answer in full[len(prompt):]:
        return full[len(prompt):].rstrip()  # the turn's end marker, without the newline some templates add
    return answer + (tokenizer.eos_token or "")


def training_turn(example: Example, markers: tools.Markers | None) -> tuple[list[dict], str]:
    """The conversation the runtime renders for ``example`` and the answer to learn.

    A plain example is the question alone. A tool example is rendered as Foundry Local renders
    a request with its tools offered (``tool_choice: auto``, see :func:`tools.runtime_messages`):
    the answer is the call (``<start>[...]<end>``), or ``MESSAGE``-framed text when no call is
    due or after the tool's result.
    """
    question = [{"role": "user", "content": example.question}]
    if not example.tools:
        return question, example.answer
    offered = list(example.tools)
    call = example.call
    if call is None:
        return tools.runtime_messages(question, offered, markers), tools.MESSAGE_FRAME + example.answer
    tool_call = {"id": "call_1", "type": "function",
                 "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}
    if not example.result:
        return tools.runtime_messages(question, offered, markers), tools.call_text([tool_call], markers)
    history = [*question, {"role": "assistant", "content": "", "tool_calls": [tool_call]},
               {"role": "tool", "tool_call_id": "call_1", "content": example.result}]
    return tools.runtime_messages(history, offered, markers), tools.MESSAGE_FRAME + example.answer


#: A batch whose prompts share at least this many leading tokens computes them once (see :func:`_batch_loss`).
SHARED_PREFIX_MIN = 64


def _batches(encoded: list[tuple[list[int], list[int]]], tooled: list[bool], *, seed: int, batch: int, steps: int):
    """The training batches, one per step, cycling through the examples in a seeded order.

    Without tool examples this is the plain cycle over one shuffled order. With them, tool
    examples (whose prompts share the runtime's long tool protocol) are batched together and
    their steps interleaved in proportion, so each tool batch computes its shared prompt once.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(encoded), generator=generator).tolist()
    size = batch
    groups = [[i for i in order if not tooled[i]], [i for i in order if tooled[i]]]
    if not groups[1] or not groups[0]:
        for step in range(steps):
            yield [encoded[order[(step * size + i) % len(order)]] for i in range(size)]
        return
    cursor = [0, 0]
    share = len(groups[1]) / len(encoded)
    for step in range(steps):
        kind = int(int((step + 1) * share) > int(step * share))  # 1: a tool step, spread evenly
        group = groups[kind]
        yield [encoded[group[(cursor[kind] + i) % len(group)]] for i in range(size)]
        cursor[kind] += size


def _batch_loss(model, batch: list[tuple[list[int], list[int]]], pad: int):
    """The batch's mean loss on its answer tokens (right-padded).

    When every prompt of the batch starts with the same :data:`SHARED_PREFIX_MIN` or more tokens
    (a tool example's system message: the runtime's tool protocol and the tools, 300-500 tokens),
    that prefix runs once without gradients and its keys and values are shared by the batch; the
    adapter learns from the rest. On a 2-core CPU this made a tool batch about 6x cheaper.
    """
    import torch

    shared = min(len(ids) for ids, _ in batch)
    for ids, labels in batch:
        first_label = next((i for i, label in enumerate(labels) if label != -100), len(labels))
        shared = min(shared, first_label - 1)
        shared = next((i for i in range(shared) if ids[i] != batch[0][0][i]), shared)
    cache = None
    if shared >= SHARED_PREFIX_MIN:
        with torch.no_grad():
            cache = model(input_ids=torch.tensor([batch[0][0][:shared]]), use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(batch))
    else:
        shared = 0
    rows = [(ids[shared:], labels[shared:]) for ids, labels in batch]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in rows])
    mask = torch.tensor([[1] * (shared + len(ids_)) + [0] * (width - len(ids_)) for ids_, _ in rows])
    return model(input_ids=ids, attention_mask=mask, labels=labels, past_key_values=cache).loss


@dataclass(frozen=True)
class TrainJob:
    """What the training child is asked (the ``train`` task's payload; its result is the loss of each step).

    Attributes:
        base: The base model's Hugging Face folder.
        out: Where the adapter is saved.
        examples: The examples to learn.
        rank: LoRA rank (alpha is twice it).
        steps: Optimizer steps.
        batch: Examples per step.
        learning_rate: AdamW's learning rate.
        seed: The seed of the initialization and of the examples' order.
    """

    base: str
    out: str
    examples: tuple[Example, ...]
    rank: int
    steps: int
    batch: int
    learning_rate: float
    seed: int


def _train_task(payload: dict, emit) -> list[float]:
    """Worker task: the training loop of a :class:`TrainJob` (torch and peft in this child only)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    job = codec.load(TrainJob, payload)
    torch.manual_seed(job.seed)
    # Every logical CPU (torch counts physical cores only), unless OMP_NUM_THREADS says otherwise: on a
    # machine another job shares, a thread that waits for a busy core stalls every step.
    asked = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(asked) if asked.isdigit() and int(asked) > 0 else os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(job.base)
    model = AutoModelForCausalLM.from_pretrained(job.base, dtype=torch.float32)
    markers = tools.find_markers(job.base)
    extra = {}
    if markers is not None and any(e.tools for e in job.examples):
        # The markers' embedding rows are trained too: a base that never used them (SmolLM2's notebook
        # tokens) has near-identical rows for them and its other special tokens (cosine 0.99), so with
        # tied embeddings no LoRA on the linear layers can make it emit one rather than another.
        extra["trainable_token_indices"] = [markers.start_id, markers.end_id]
    model = get_peft_model(model, LoraConfig(r=job.rank, lora_alpha=2 * job.rank, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM", **extra))
    encoded = []
    for example in job.examples:
        # The prompt exactly as the runtime renders it (the base's chat template), then the answer.
        messages, answer = training_turn(example, markers)
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        answer_ids = tokenizer(_answer_turn(tokenizer, messages, answer, prompt), add_special_tokens=False).input_ids
        encoded.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
        context = getattr(model.config, "max_position_embeddings", None)
        if isinstance(context, int) and len(encoded[-1][0]) > context:
            # Positions past the context were never trained; the runtime would refuse such a prompt anyway.
            raise InputError(f"Example {example.id!r} is {len(encoded[-1][0])} tokens with its prompt, over the base's "
                             f"{context}-token context: shorten its answer or leave it out of the dataset.")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=job.learning_rate)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    losses = []
    model.train()
    tooled = [bool(e.tools) for e in job.examples]
    for step, batch in enumerate(_batches(encoded, tooled, seed=job.seed, batch=job.batch, steps=job.steps)):
        loss = _batch_loss(model, batch, pad)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(float(loss), 4))
        emit({"step": step + 1, "loss": losses[-1]})
    model.save_pretrained(job.out)
    tokenizer.save_pretrained(job.out)
    return losses


if __name__ == "__main__":
    workers.serve({"train": _train_task})
