"""One GRPO step (`apr train rl`) on a small model: time and tokens/s of rollouts vs learning.

    python benchmarks/bench_rl.py [--init MODEL_DIR | --preset tiny] [--batch 4 --group 4 --context 512]

Without --init it builds a random model of the preset whose EOS logit is held at zero while
the other logits are scaled up, so it (almost) never stops: every rollout runs to `--context`
tokens, one segment each (a random model never spawns). That measures decode and learner
throughput at a known length; spawn/join overheads need a trained APR model (--init).
Prints one JSON line per measured step; the first step (warm-up) is reported separately.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", help="a supervised model folder (default: random --preset model)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--method", default="", help="apr | sos (default: the model's)")
    ap.add_argument("--batch", type=int, default=4, help="problems per step")
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2, help="measured steps after one warm-up step")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    import torch

    from apr.countdown import TaskConfig, generate
    from apr.model_folder import ModelInfo, make_model, save_model
    from apr.tokenizer import build_tokenizer, tokenizer_fingerprint
    from apr.train.config import RLConfig, load_config
    from apr.train.grpo import RLTrainer

    tmp = Path(tempfile.mkdtemp(prefix="bench_rl_"))
    init = args.init
    if init is None:
        tok = build_tokenizer()
        torch.manual_seed(0)
        init = tmp / "model"
        model = make_model(args.preset, tok)
        with torch.no_grad():  # no early EOS: rollouts run to the context
            model.lm_head.weight.mul_(50.0)
            model.lm_head.weight[tok.eos_token_id] = 0
        save_model(model, tok, ModelInfo(method="apr", preset=args.preset, tokenizer=tokenizer_fingerprint(tok)), init)
    with open(tmp / "problems.jsonl", "w") as f:
        # targets above 100 cannot collide with the validation set (targets 10..100)
        for p in generate(args.batch * (args.steps + 1), seed=1, task=TaskConfig(target_min=101, target_max=200)):
            f.write(json.dumps(p.to_dict()) + "\n")
    sets = [f"init={init}", f"problems={tmp / 'problems.jsonl'}", f"out_dir={tmp / 'out'}", f"batch_size={args.batch}",
            f"group_size={args.group}", f"context={args.context}", f"max_slots={args.batch * args.group}",
            f"device={args.device}", f"max_steps={args.steps + 1}"]
    if args.method:
        sets.append(f"method={args.method}")
    trainer = RLTrainer(load_config(None, sets, cls=RLConfig), reward_fn=lambda r, p: float(r["index"] % 2))
    print(f"device {trainer.device}, model {trainer.info.preset} ({sum(p.numel() for p in trainer.policy.parameters()) / 1e6:.1f}M params), "
          f"{args.batch} problems x {args.group} samples, context {args.context}", file=sys.stderr)
    keys = ("rollout_s", "learn_s", "rollout_tok_s", "train_tok_s", "total_tokens", "segments", "trained_tokens", "children")
    for k in range(args.steps + 1):
        t = time.perf_counter()
        m = trainer.train_step()
        out = {"step": k, "warmup": k == 0, "step_s": round(time.perf_counter() - t, 3)}
        out.update({key: round(m[key], 2) for key in keys})
        out["rollout_share"] = round(m["rollout_s"] / (m["rollout_s"] + m["learn_s"]), 3)
        print(json.dumps(out))
    trainer.engine.close()


if __name__ == "__main__":
    main()
