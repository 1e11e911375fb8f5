"""Targets: many projects, regions and accounts in one run (``SFS_CLEANUP_TARGETS_FILE``).

:mod:`.model` holds what a target is and how it becomes settings (its credentials resolved in
the process that uses them); :mod:`.loading` reads and checks a targets file.
"""

from worker.targets.loading import load_targets, schema
from worker.targets.model import ENDPOINT_TEMPLATE, IAM_TEMPLATE, Target, TargetsError, TargetSet

__all__ = ["ENDPOINT_TEMPLATE", "IAM_TEMPLATE", "Target", "TargetSet", "TargetsError", "load_targets", "schema"]
