"""``python -m slmops.toolkit.endpoint``: the endpoint's child process (see :func:`~slmops.toolkit.endpoint.cli.main`)."""

from slmops.toolkit.endpoint.cli import main

main()
