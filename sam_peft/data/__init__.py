"""Data: the papers' benchmarks, custom folders and Hub datasets as `datasets.DatasetDict`s, SAM preprocessing.

```python
from sam_peft.data import load_benchmark, prepare_for_sam, sam_collate_fn

dataset = load_benchmark("kvasir", "data/Kvasir-SEG")  # train / validation / test: image, mask, id
inputs = prepare_for_sam(dataset, image_size=1024)  # lazy resize, pad, normalise; flips on train
loader = torch.utils.data.DataLoader(inputs["train"], batch_size=4, shuffle=True, collate_fn=sam_collate_fn)
```
"""

from .decoding import (
    IGNORE_INDEX,
    SegmentationDecoder,
    open_image,
    thresholded_masks,
    to_binary_mask,
    to_label_map,
    to_rgb,
)
from .errors import DataFileError, DataLayoutError
from .layouts import (
    BENCHMARKS,
    DEFAULT_SPLIT_SEED,
    TRANS10K_V1_PALETTE,
    BenchmarkLayout,
    SplitSource,
)
from .loaders import load_benchmark, load_folder, load_hub, load_layout, segmentation_features, verify_dataset
from .objects import CocoStats, ObjectDecoder, load_coco, masks_to_objects, object_features
from .preprocessing import (
    DEFAULT_AUGMENTATION,
    Augmentation,
    SamSegmentationTransform,
    prepare_for_sam,
    sam_collate_fn,
    sam_image_processor,
)
from .prompted import (
    SamObjectTransform,
    object_boxes,
    object_present,
    object_targets,
    prepare_objects_for_sam,
    sam_objects_collate_fn,
)
from .prompts import PADDING_POINT_LABEL, boxes_from_masks, next_click, sample_points
from .synthetic import (
    SYNTHETIC_DOMAINS,
    Appearance,
    binary_dataset,
    binary_samples,
    instance_dataset,
    multiclass_dataset,
    multiclass_samples,
)

__all__ = [
    "BENCHMARKS",
    "DEFAULT_AUGMENTATION",
    "DEFAULT_SPLIT_SEED",
    "IGNORE_INDEX",
    "PADDING_POINT_LABEL",
    "SYNTHETIC_DOMAINS",
    "TRANS10K_V1_PALETTE",
    "Appearance",
    "Augmentation",
    "BenchmarkLayout",
    "CocoStats",
    "DataFileError",
    "DataLayoutError",
    "ObjectDecoder",
    "SamObjectTransform",
    "SamSegmentationTransform",
    "SegmentationDecoder",
    "SplitSource",
    "binary_dataset",
    "binary_samples",
    "boxes_from_masks",
    "instance_dataset",
    "load_benchmark",
    "load_coco",
    "load_folder",
    "load_hub",
    "load_layout",
    "masks_to_objects",
    "multiclass_dataset",
    "multiclass_samples",
    "next_click",
    "object_boxes",
    "object_features",
    "object_present",
    "object_targets",
    "open_image",
    "prepare_for_sam",
    "prepare_objects_for_sam",
    "sam_collate_fn",
    "sam_image_processor",
    "sam_objects_collate_fn",
    "sample_points",
    "segmentation_features",
    "thresholded_masks",
    "to_binary_mask",
    "to_label_map",
    "to_rgb",
    "verify_dataset",
]
