"""The SFS Turbo API side of the worker: how calls are sent, authenticated and judged.

* :mod:`worker.api.client`: the HPC-cache task API (list, show, delete) on httpx.
* :mod:`worker.api.transport`: the bounded reading of answer bodies under it.
* :mod:`worker.api.answers`: the one classifier, every answer to one verdict.
* :mod:`worker.api.auth`: the three authentication modes behind one ``httpx.Auth`` seam.
* :mod:`worker.api.signer`: AK/SK request signing, ``SDK-HMAC-SHA256``.

IDs are checked by :mod:`worker.ids`, which stays outside: the scheduler checks the same IDs.
"""
