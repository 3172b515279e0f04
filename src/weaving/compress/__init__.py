"""TSV-C: compressed task vectors (Gargiulo et al., CVPR 2025), their files and TSV-Merge from factors.

    from weaving.compress import compress_task_vectors, tsv_merge_compressed, save_compressed, load_compressed
    compressed = compress_task_vectors(taus)                 # rank fraction 1/T
    merged = tsv_merge_compressed(compressed)                # == merge("tsv", taus)
    tau_0 = compressed[0].to_dense()                         # reconstruction, any method merges it

Names are imported on first use (PEP 562).
"""

from __future__ import annotations

from weaving._lazy import lazy_exports

_EXPORTS = {
    "CompressedTaskVector": "weaving.compress.tsvc",
    "Factors": "weaving.compress.tsvc",
    "check_compatible": "weaving.compress.tsvc",
    "check_rank_fraction": "weaving.compress.tsvc",
    "compress_task_vector": "weaving.compress.tsvc",
    "compress_task_vectors": "weaving.compress.tsvc",
    "default_rank_fraction": "weaving.compress.tsvc",
    "is_factored": "weaving.compress.tsvc",
    "rank_for": "weaving.compress.tsvc",
    "storage_summary": "weaving.compress.tsvc",
    "tsv_merge_compressed": "weaving.compress.tsvc",
    "CompressedCheckpointSource": "weaving.compress.files",
    "CompressedTaskVectorSource": "weaving.compress.files",
    "is_compressed_file": "weaving.compress.files",
    "load_compressed": "weaving.compress.files",
    "read_compressed_metadata": "weaving.compress.files",
    "save_compressed": "weaving.compress.files",
    "run_compression_experiment": "weaving.compress.experiment",
}

__all__ = [
    "CompressedCheckpointSource",
    "CompressedTaskVector",
    "CompressedTaskVectorSource",
    "Factors",
    "check_compatible",
    "check_rank_fraction",
    "compress_task_vector",
    "compress_task_vectors",
    "default_rank_fraction",
    "is_compressed_file",
    "is_factored",
    "load_compressed",
    "rank_for",
    "read_compressed_metadata",
    "run_compression_experiment",
    "save_compressed",
    "storage_summary",
    "tsv_merge_compressed",
]

__getattr__, __dir__ = lazy_exports("weaving.compress", _EXPORTS, globals())
