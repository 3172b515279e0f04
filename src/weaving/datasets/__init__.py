"""Datasets: the registry, preparation into ``data/prepared/<name>/``, loading back, verified downloads.

```python
from weaving.datasets import DATASETS, prepare, load_prepared, class_splits
meta = prepare("mnist", out_dir="data/prepared/mnist", raw_dir="data/raw", seed=0,
               limits={"pretrain": 3000, "train": 2000, "test": 500})
ds = load_prepared("data/prepared/mnist")      # .classnames .templates .num_classes .split(name)
class_splits(num_classes=10, n_splits=5, seed=0)
```
See docs/contracts.md ("Prepared dataset on disk") and SOURCES.md (where the paper's data comes from).
"""

from weaving.datasets.base import DatasetError
from weaving.datasets.download import Artifact, DownloadError, download
from weaving.datasets.preparation import PROFILES, prepare
from weaving.datasets.prepared import PreparedDataset, SplitData, load_prepared
from weaving.datasets.registry import DATASETS, DatasetSpec, Source, get_spec
from weaving.datasets.splits import SPLITS, class_splits

__all__ = [
    "DATASETS", "PROFILES", "SPLITS", "Artifact", "DatasetError", "DatasetSpec", "DownloadError", "PreparedDataset",
    "Source", "SplitData", "class_splits", "download", "get_spec", "load_prepared", "prepare",
]
