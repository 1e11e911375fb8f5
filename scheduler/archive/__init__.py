"""The archive: every ended run's evidence bundle is written to a target (a directory, or an
S3-compatible bucket such as Huawei Cloud OBS) before its keys are given their retention.

:mod:`~scheduler.archive.target` speaks to the targets, :mod:`~scheduler.archive.index` keeps the
Redis side (runs waiting, runs archived, retries), :mod:`~scheduler.archive.archiver` is the pass
the reconciler runs, and :mod:`~scheduler.archive.read` reads an archived run back from its bundle.
"""
