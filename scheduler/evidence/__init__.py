"""A run's evidence bundle: one archive of its report, every task's attempts and request IDs,
refused input, rate record, policy and settings fingerprint, with a hashed manifest
(:mod:`~scheduler.evidence.members`); written by :mod:`~scheduler.evidence.bundle`, checked
offline by :mod:`~scheduler.evidence.verify`."""
