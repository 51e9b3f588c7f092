"""Training: supervised fine-tuning on search demonstrations (`sft`) and GRPO from a
supervised model (`grpo`), with their configs (`config`) and the pieces both share
(`common`, `checkpoint`, `metrics`). The commands are `apr.commands.train`."""
