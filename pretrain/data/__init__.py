"""Video data path: shards, decoding, clip sampling, augmentation, synthetic data."""
