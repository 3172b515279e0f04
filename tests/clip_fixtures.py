"""A dataset split held in memory, with the interface the CLIP side reads (`weaving.datasets.SplitData`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass
class ArraySplit:
    images: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)

    def uint8_images(self):
        return self.images

    def pil(self, i):
        return Image.fromarray(self.images[i].squeeze(-1) if self.images.shape[-1] == 1 else self.images[i]).convert("RGB")
