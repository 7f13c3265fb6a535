"""Fill the frozen-encoder embedding cache of a cad or decoder_only run ahead of training, with progress bars.

    python recipes/cache_embeddings.py recipes/configs/cad_cod10k.yaml --data_dir data/COD10K-v3
    accelerate launch recipes/train.py recipes/configs/cad_cod10k.yaml --data_dir data/COD10K-v3 --cache_embeddings

Takes the same configuration as `recipes/train.py` and stores the encoder's output of every training image, as is
and horizontally flipped when the run flips (`hflip` > 0), and of every evaluation image, under
`embedding_cache_dir`; training with `--cache_embeddings` then never runs the image encoder. Entries already
there are kept, damaged ones are replaced. Runs on the GPU when there is one.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import torch
from torch.utils.data import DataLoader

from sam_peft.data import prepare_for_sam, sam_collate_fn
from sam_peft.data.preprocessing import Augmentation
from sam_peft.modeling import input_image_size
from sam_peft.training import build_datasets, build_embedding_cache, build_model, ensure_random_base, parse_args

USAGE = "python recipes/cache_embeddings.py CONFIG.yaml [--key value ...]"


def main() -> None:
    model_args, data_args, train_args = parse_args(description=__doc__, usage=USAGE)
    data_args.cache_embeddings = True
    ensure_random_base(model_args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(model_args).to(device).eval()
    image_size = data_args.image_size or input_image_size(model.config)
    raw, _ = build_datasets(data_args, model_args.num_labels, image_size, train_args.seed)
    cache = build_embedding_cache(data_args, model, image_size)
    cache.repair()

    flips = (0.0, 1.0) if data_args.hflip > 0 else (0.0,)
    passes = [("train", flip) for flip in flips] + [(data_args.eval_split, 0.0)]
    for split, flip in passes:
        prepared = prepare_for_sam(raw[split], image_size, augmentation=Augmentation(hflip=flip))
        loader = DataLoader(prepared, batch_size=train_args.eval_batch_size, collate_fn=sam_collate_fn)
        label = f"{split}{' (flipped)' if flip else ''}"
        stats = cache.fill(({"pixel_values": batch["pixel_values"].to(device)} for batch in loader), total=len(loader))
        print(f"{label}: {stats.misses} computed, {stats.hits} already cached, {stats.repaired} repaired")
    print(json.dumps({"directory": str(cache.directory), "entries": len(cache), **asdict(cache.stats)}, indent=2))


if __name__ == "__main__":
    main()
