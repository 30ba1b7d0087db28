"""The edge cases' child process: ``python -m slmops.toolkit.core.workers slmops.toolkit.stages.checklist.edge_worker``.

Thin on purpose: it only serves :func:`slmops.toolkit.stages.checklist.edge.edge_task`.
"""

from slmops.toolkit.core import workers
from slmops.toolkit.stages.checklist.edge import edge_task

if __name__ == "__main__":
    workers.serve({"edge": edge_task})
