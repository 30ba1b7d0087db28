"""The toolkit's errors: one base class, small subclasses that say what to do.

Two families, told apart by the CLI's exit code: :class:`InputError` (2: input that cannot
be used: a wrong path, a malformed file, an unsafe name, a value out of range; raised before
anything is changed) and every other :class:`SlmopsError` (1: a step that failed).
"""

from __future__ import annotations


class SlmopsError(Exception):
    """Base class for every error the toolkit raises on purpose.

    Each message names the problem and the fix, so the CLI can print it as-is.
    """

    #: The ``slmops`` exit code for this error.
    exit_code = 1


class InputError(SlmopsError):
    """Input that cannot be used (a path, a file, a name, a value); nothing was changed."""

    exit_code = 2


class DiskFullError(SlmopsError):
    """The disk filled up while writing; the previous result is intact and nothing partial was left."""

    def __init__(self, path: object) -> None:
        self.path = str(path)
        super().__init__(f"No space left on the device while writing {path}; nothing was changed. "
                         "Free some disk space (or write elsewhere) and run again.")


class ModelFolderError(InputError):
    """A model folder is missing, incomplete, or not a Hugging Face / ONNX model."""

    def __init__(self, path: object, problem: str, fix: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {problem}. {fix}")


class QuantizedCheckpointError(InputError):
    """A checkpoint is already quantized (bitsandbytes, GPTQ, AWQ, FP8, ...); the toolkit converts 16/32-bit weights.

    Attributes:
        path: The checkpoint's folder.
        method: The quantization, in words (``"bitsandbytes 4-bit"``, ``"gptq"``).
        original: A guess at the 16-bit model it was quantized from (``""`` when there is none).
    """

    def __init__(self, path: object, method: str, original: str, message: str) -> None:
        self.path = str(path)
        self.method = method
        self.original = original
        super().__init__(message)


class InconsistentCheckpointError(ModelFolderError):
    """A checkpoint's ``config.json`` contradicts its weights (vocabulary, width, layers, a missing LM head)."""


class UnsupportedArchitectureError(InputError):
    """The model's architecture is not one the conversion route can build."""

    def __init__(self, architecture: str, supported: list[str]) -> None:
        self.architecture = architecture
        self.supported = supported
        super().__init__(
            f"Architecture {architecture!r} is not supported by the ONNX Runtime GenAI "
            f"builder. Supported: {', '.join(supported)}."
        )


class InvalidOptionError(InputError):
    """An option is out of range or not one of its choices."""

    def __init__(self, name: str, value: object, allowed: str) -> None:
        self.name = name
        self.value = value
        super().__init__(f"{name}={value!r} is not valid: expected {allowed}.")


class ToolFailedError(SlmopsError):
    """A child process (an external tool such as the builder or Olive, or one of our workers) failed.

    Attributes:
        tool: What ran, in words.
        returncode: Its exit code (negative: killed by that signal).
        log_path: Its full log, kept for reading.
        detail: The error in a line or a few (the child's own error, or the log's last lines).
    """

    def __init__(self, tool: str, returncode: int, log_path: object, detail: str) -> None:
        self.tool = tool
        self.returncode = returncode
        self.log_path = str(log_path)
        self.detail = detail
        super().__init__(f"{tool} failed (exit code {returncode}): {detail}\nFull log: {log_path}")


class ToolTimeoutError(ToolFailedError):
    """A child process ran past its time limit (or went silent past its idle limit) and was killed."""

    def __init__(self, tool: str, seconds: float, log_path: object) -> None:
        self.seconds = seconds
        super().__init__(tool, -9, log_path, f"no progress within {seconds:.0f} s: hung, killed")


class TemplateError(InputError):
    """A prompt template is malformed or cannot be derived."""


class InvalidNameError(InputError):
    """A model name is unsafe (path separators, `..`, whitespace, too long)."""


class ParamsError(InputError):
    """A run's parameters (a params file, a sweep, notebook values) have a wrong name, type or range."""


class RegistrationError(SlmopsError):
    """Foundry Local refused or cannot find a registration."""


class NameTakenError(RegistrationError, InputError):
    """The name is registered to another model (replace it only with ``--force``)."""


class ModelNotFoundError(RegistrationError, InputError):
    """No model with that name is registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        listing = ", ".join(known) if known else "none"
        super().__init__(
            f"No model named {name!r} is registered (registered: {listing}). "
            f"Register it with `slmops register ONNX_DIR --name {name}`."
        )


class PromptTooLongError(InputError):
    """A prompt plus the requested output does not fit the model's context."""

    def __init__(self, prompt_tokens: int, max_output: int, context: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.context = context
        super().__init__(
            f"The prompt is {prompt_tokens} tokens and {max_output} output tokens were "
            f"requested, but the model's context is {context} tokens. Shorten the prompt "
            f"or lower max output tokens."
        )


class InvalidPromptError(InputError):
    """A prompt the model cannot answer (empty, or only whitespace with no history)."""


class FoundryRequestError(SlmopsError):
    """Foundry Local refused or failed a request for a reason the toolkit did not catch first."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"Foundry Local could not answer: {detail}")


class InsufficientMemoryError(InputError):
    """A step is predicted to need more memory than the machine has available; nothing was started."""


class ParityError(SlmopsError):
    """A build does not compute what its source model computes (its logits differ beyond tolerance); it was not kept.

    Attributes:
        record: The failed check as a manifest keeps one (figures and tolerance, numbers as numbers), with the
            refused build's ``size_mb``; empty when the raiser had none.
    """

    def __init__(self, message: str, record: dict | None = None) -> None:
        self.record = dict(record or {})
        super().__init__(message)
