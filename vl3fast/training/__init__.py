"""Training VideoLLaMA3: configs, stage freezing, DeepSpeed engine, checkpoints with exact resume, export, LoRA."""
