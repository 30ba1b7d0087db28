"""Models' own Jinja chat templates rendered as transformers 5 renders them, within limits.

The same sandbox settings, globals (``raise_exception``, ``strftime_now``, ``namespace``,
``dict``), the ``tojson`` filter, loop controls and the ``{% generation %}`` tag; a rendering
stops at :data:`RENDER_SECONDS`, :data:`MAX_RENDERED_CHARS` or :data:`MAX_CALL_DEPTH` with a
one-line :class:`~slmops.toolkit.core.errors.TemplateError`.
"""

from __future__ import annotations

import ctypes
import functools
import json
import threading
from datetime import datetime

from slmops.toolkit.core.errors import TemplateError


class TemplateRaised(TemplateError):
    """The chat template called ``raise_exception`` (its message is :attr:`reason`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the chat template raised: {reason}")
        self.reason = reason


class _TemplateDict:
    """transformers' ``dict`` global: builds dicts, offers ``fromkeys``, exposes nothing else."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _generation_tag():
    """transformers' ``{% generation %}...{% endgeneration %}`` extension (a Jinja extension class)."""
    import jinja2
    import jinja2.ext

    class GenerationTag(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}``: marks the assistant's tokens for training; renders its body."""

        tags = {"generation"}  # noqa: RUF012 (jinja's own class attribute)

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller) -> str:
            return caller()

    return GenerationTag


@functools.lru_cache(maxsize=32)
def _compile(jinja_template: str):
    """Compile a chat template in the environment transformers 5 uses (``utils/chat_template_utils.py``)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Namespace(jinja2.utils.Namespace):
        """transformers' namespace: no underscore-prefixed attributes."""

        def __init__(*args, **kwargs):  # the signature trick of jinja's own Namespace
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with an underscore")

    def raise_exception(message: str) -> None:
        raise TemplateRaised(str(message))

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class LimitedSandbox(ImmutableSandboxedEnvironment):
        """transformers' sandbox, with calls nested at most :data:`MAX_CALL_DEPTH` deep (a macro that recurses)."""

        def call(self, context, obj, /, *args, **kwargs):
            depth = getattr(_RENDERING, "depth", 0)
            if depth >= MAX_CALL_DEPTH:
                raise _TooDeep
            _RENDERING.depth = depth + 1
            try:
                return super().call(context, obj, *args, **kwargs)
            finally:
                _RENDERING.depth = depth

    env = LimitedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_generation_tag(), jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=_TemplateDict(), namespace=Namespace)
    return env.from_string(jinja_template)


#: Calls (macros, filters, functions) nested deeper than this stop a rendering: a chat template needs a handful,
#: and Python's own recursion limit (about 1,000 frames, several per Jinja call) must never be what stops one.
MAX_CALL_DEPTH = 64


#: Seconds a rendering may take (wall clock). A chat template renders a conversation in milliseconds; one that
#: takes longer loops over something huge, and every caller (registration, doctor, chat, serve, the picker) would hang.
RENDER_SECONDS = 5.0


#: Characters a rendering may produce: a prompt longer than this fits no small model's context.
MAX_RENDERED_CHARS = 10_000_000


_RENDERING = threading.local()


class _TooDeep(Exception):
    """Raised inside a rendering whose calls nest past :data:`MAX_CALL_DEPTH`."""


class _TooLong(Exception):
    """Raised (asynchronously) into a rendering still running at its deadline."""


def _limit_message(what: str) -> str:
    return (f"the chat template cannot be rendered: {what}; fix the template, or register the model with a preset "
            "(--template chatml, ...)")


def _render_within(template, seconds: float, **variables: object) -> str:
    """``template.render(**variables)``, stopped at ``seconds`` of wall clock or :data:`MAX_RENDERED_CHARS`.

    Jinja renders in Python bytecode in this thread; at the deadline a timer raises :class:`_TooLong`
    in it (``PyThreadState_SetAsyncExc``, checked between bytecodes, so a loop of any shape stops).
    The lock makes the timer's raise and the end of the rendering exclude each other, and a raise
    that was sent but not yet delivered is withdrawn.
    """
    thread, lock, state = threading.get_ident(), threading.Lock(), {"done": False, "sent": False}

    def expire() -> None:
        with lock:
            if not state["done"]:
                state["sent"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(_TooLong))

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    try:
        timer.start()
        try:
            size, pieces = 0, []
            for piece in template.generate(**variables):
                size += len(piece)
                if size > MAX_RENDERED_CHARS:
                    raise TemplateError(_limit_message(f"it writes more than {MAX_RENDERED_CHARS:,} characters"))
                pieces.append(piece)
            return "".join(pieces)
        finally:
            timer.cancel()
            with lock:
                state["done"] = True
                if state["sent"]:  # sent after the last bytecode of the rendering: withdraw it
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), None)
    except _TooLong:
        raise TemplateError(_limit_message(f"it ran past {seconds:g} s (a loop over something huge?)")) from None


def render_jinja(jinja_template: str, messages: list[dict[str, str]], *, add_generation_prompt: bool = True,
                 bos_token: str = "", eos_token: str = "", seconds: float | None = None) -> str:
    """Render a Jinja chat template as transformers' ``apply_chat_template`` does, in its sandbox, with limits.

    Every template the toolkit renders goes through here (registration, doctor, chat, serve, the
    picker): a rendering stops at ``seconds`` of wall clock (default :data:`RENDER_SECONDS`), at
    :data:`MAX_RENDERED_CHARS`, or at calls nested :data:`MAX_CALL_DEPTH` deep (a macro that calls
    itself), with one line.

    Raises:
        TemplateRaised: the template called ``raise_exception``.
        TemplateError: the template does not parse, fails to render, or passes a limit (one line).
    """
    from jinja2 import TemplateError as JinjaError

    try:
        return _render_within(_compile(jinja_template), RENDER_SECONDS if seconds is None else seconds,
                              messages=messages, tools=None, documents=None,
                              add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token)
    except JinjaError as exc:
        reason = " ".join(str(exc).split())
        raise TemplateError(f"the chat template cannot be rendered: {reason}") from exc
    except (_TooDeep, RecursionError):
        raise TemplateError(_limit_message(f"it nests calls more than {MAX_CALL_DEPTH} deep (a macro that calls "
                                           "itself without end?)")) from None
    except (MemoryError, OverflowError) as exc:
        raise TemplateError(_limit_message(f"it builds a value too large ({type(exc).__name__})")) from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        # Python's own errors from the template's expressions (1 / 0, 'a' + 1, ...): transformers lets them through.
        reason = " ".join(str(exc).split())[:200]
        raise TemplateError(f"the chat template cannot be rendered: {type(exc).__name__}: {reason}") from exc
