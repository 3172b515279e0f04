"""weaving: Weight Weaving, data-free model merging by parameter pooling.

Public merge API::

    from weaving import task_vectors, apply_task_vector, merge, weave, weave_from_merged
    from weaving import METHODS, POOLINGS, parse_search_space

Over state-dict sources (files, streamed key by key)::

    from weaving import StateDictSource, stream_merge              # validate, then stream
    from weaving import MergeRequest, validate_request, stream_request  # validate once, stream later

Names are imported on first use (PEP 562), so `weaving.datasets` and `weaving.config`
load without torch.
"""

from __future__ import annotations

from weaving._lazy import lazy_exports

_EXPORTS = {
    "DictSource": "weaving.sources",
    "StateDictSource": "weaving.sources",
    "MergeRequest": "weaving.request",
    "validate_request": "weaving.request",
    "apply_task_vector": "weaving.engine",
    "merge": "weaving.engine",
    "stream_merge": "weaving.streaming",
    "stream_request": "weaving.streaming",
    "task_vectors": "weaving.engine",
    "weave": "weaving.engine",
    "weave_from_merged": "weaving.engine",
    "InputError": "weaving.errors",
    "ParamError": "weaving.errors",
    "WeavingError": "weaving.errors",
    "METHODS": "weaving.methods",
    "POOL_OVER": "weaving.poolings",
    "POOLINGS": "weaving.poolings",
    "parse_search_space": "weaving.search_space",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports('weaving', _EXPORTS, globals())
