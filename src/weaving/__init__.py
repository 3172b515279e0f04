"""weaving: Weight Weaving, data-free model merging by parameter pooling.

Public merge API::

    from weaving import task_vectors, apply_task_vector, merge, weave, weave_from_merged
    from weaving import METHODS, POOLINGS, parse_search_space
"""

from weaving.engine import (
    DictSource,
    StateDictSource,
    apply_task_vector,
    merge,
    stream_merge,
    task_vectors,
    weave,
    weave_from_merged,
)
from weaving.errors import InputError, ParamError, WeavingError
from weaving.methods import METHODS
from weaving.poolings import POOL_OVER, POOLINGS
from weaving.search_space import parse_search_space

__all__ = [
    "METHODS",
    "POOLINGS",
    "POOL_OVER",
    "DictSource",
    "InputError",
    "ParamError",
    "StateDictSource",
    "WeavingError",
    "apply_task_vector",
    "merge",
    "parse_search_space",
    "stream_merge",
    "task_vectors",
    "weave",
    "weave_from_merged",
]
