"""Training: supervised fine-tuning on search demonstrations (`apr train sft`)."""
