"""The edge cases' child process: ``python -m toolkit.core.workers toolkit.stages.checklist.edge_worker``.

Thin on purpose: it only serves :func:`toolkit.stages.checklist.edge.edge_task`.
"""

from toolkit.core import workers
from toolkit.stages.checklist.edge import edge_task

if __name__ == "__main__":
    workers.serve({"edge": edge_task})
