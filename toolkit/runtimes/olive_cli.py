"""Run Olive's CLI with telemetry off from the start (child process entry point).

``olive ... --disable_telemetry`` and ``OLIVE_DISABLE_TELEMETRY=1`` both take effect only
after Olive has queued a heartbeat event (olive-ai 0.13, ``Telemetry.__init__``). At exit
Olive then waits for its exporter to give up sending it: offline, that wait was 8.6 s of a
17 s ``olive auto-opt`` on a tiny model. Olive skips the heartbeat when it detects CI; we
take that same path explicitly, so nothing is queued, sent or cached. Usage::

    python -m slmops.toolkit.core.workers slmops.toolkit.runtimes.olive_cli auto-opt --model_name_or_path DIR ...
"""

from __future__ import annotations


def main() -> None:
    """Disable Olive's telemetry, give its in-process model builder our fixes, then hand over to Olive's CLI.

    Olive's ``ModelBuilder`` pass calls the builder's ``create_model`` in this process, so the
    transformers 5 compatibility and the lean FP32 export of :mod:`slmops.toolkit.runtimes.genai_builder`
    apply to the Olive routes as they do to the builder route.
    """
    from olive.telemetry.telemetry import Telemetry

    Telemetry._is_ci_environment = staticmethod(lambda: True)

    from slmops.toolkit.runtimes import genai_builder

    genai_builder.install()

    from olive.cli.launcher import main as olive_main

    olive_main(called_as_console_script=False)


if __name__ == "__main__":
    main()
