"""What each optimisation buys: one switch at a time against a base config, side by side in one run
(`python -m asl_ray.ablate`), plus FLOPs per sample, MFU and the data pipeline's margin. No Ray here."""
