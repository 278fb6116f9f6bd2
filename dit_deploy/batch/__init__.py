"""Segment whole datasets offline on Ray Data: ``dit-deploy batch`` (the ``batch`` extra).

    from dit_deploy.batch import BatchOptions, run_batch
    summary = run_batch(BatchOptions("pairs.jsonl", "out/", "exports/vit_b", num_workers=2))

Importing this package does not import Ray; running a job does.
"""

from .pipeline import BatchOptions, run_batch
from .shards import BatchJobError

__all__ = ["BatchJobError", "BatchOptions", "run_batch"]
