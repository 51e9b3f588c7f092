"""GRPO (`apr train rl`): the loss by hand, masks, malformed rollouts, the CLI, resume, bad input."""

import http.server
import json
import math
import shutil
import threading

import pytest
import torch

from support.models import tiny_model

from apr import protocol as P
from apr.commands import main
from apr.errors import UserError
from apr.train import rl_loss as L
from apr.train.config import RLConfig, load_config
from tolerance import kernel_approx, tensors_close

# ---------------------------------------------------------------------------- fixtures



@pytest.fixture(scope="module")
def files(tmp_path_factory, tok):
    from apr.countdown import TaskConfig, generate
    from apr.model_folder import ModelInfo, save_model
    from apr.tokenizer import tokenizer_fingerprint

    d = tmp_path_factory.mktemp("rl")
    save_model(tiny_model(tok), tok, ModelInfo(method="apr", preset="test", tokenizer=tokenizer_fingerprint(tok)), d / "model")
    task = TaskConfig(num_count=4, num_max=20, target_min=10, target_max=30)
    with open(d / "train.jsonl", "w") as f:
        for p in generate(6, seed=3, task=task):
            f.write(json.dumps(p.to_dict()) + "\n")
    (d / "val.jsonl").write_text(json.dumps({"nums": [1, 2, 3, 4], "target": 24}) + "\n")
    return d


def config(files, out, *extra):
    base = [f"init={files / 'model'}", f"problems={files / 'train.jsonl'}", f"val_problems={files / 'val.jsonl'}",
            f"out_dir={out}", "max_steps=2", "batch_size=2", "group_size=2", "rollout.context=48",
            "max_slots=8", "eval_every=0", "eval_at_start=false", "save_every=0", "lr=1e-3"]
    return load_config(None, base + list(extra), cls=RLConfig)


def metrics(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


# A hand-built APR rollout: the parent spawns two children, one finishes, one is cut.
SPAWN = P.spawn_block([P.ChildRequest(0, 1, "0,0", None), P.ChildRequest(1, 1, "0,1", None)])
PARENT_SEG0 = "\nExploring Operation: 4-3=1, Resulting Numbers: [1]\n" + SPAWN
JOIN = P.join_text([P.ChildResult(0, 1, "0,0", None), P.ChildResult(1, 1, "0,1", None)])
PARENT_SEG1 = "No solution found.\n"


def rollout_threads():
    child = lambda cid, seg, status: {"id": cid, "prompt": f"Moving to Node #{cid}\nCurrent State: 24:[1], Operations: []",
                                      "segments": [seg], "joins": [], "children": [], "status": status}
    return {
        "id": "0", "prompt": "Moving to Node #0\nCurrent State: 24:[4, 3], Operations: []",
        "segments": [PARENT_SEG0, PARENT_SEG1], "joins": [JOIN], "status": "done",
        "children": [[child("0.0", "\nNo solution found.\n", "done"), child("0.1", "\nExploring Op", "cut")]],
    }


def trained_text(tok, seq):
    return tok.decode([i for i, t in zip(seq.ids, seq.trained) if t and i != tok.eos_token_id])


# ---------------------------------------------------------------------------- units


def test_group_advantages_by_hand():
    adv = L.group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]), eps=0.0)
    std = math.sqrt((0.75**2 + 3 * 0.25**2) / 3)  # sample std
    assert torch.allclose(adv[0], torch.tensor([0.75, -0.25, -0.25, -0.25]) / std)
    assert adv[1].abs().sum() == 0  # an all-equal group has no advantage


def test_every_segment_trains_only_its_own_generated_text(tok):
    stats = L.BuildStats()
    seqs = L.rollout_sequences(rollout_threads(), 0, tok, 512, stats)
    assert [s.thread for s in seqs] == ["0", "0", "0.0", "0.1"]
    # parent before the spawn, parent after the join (not the join text, not seg0 again), children
    assert [trained_text(tok, s) for s in seqs] == [PARENT_SEG0, PARENT_SEG1, "\nNo solution found.\n", "\nExploring Op"]
    eos = [s.ids[-1] == tok.eos_token_id and s.trained[-1] for s in seqs]
    assert eos == [False, True, True, False]  # EOS only where a finished thread emitted it
    assert tok.decode(seqs[1].ids[1:]).startswith(rollout_threads()["prompt"] + PARENT_SEG0[:20])  # context kept, untrained
    assert stats.segments == 4 and stats.malformed_threads == 0


def test_malformed_threads_are_skipped_the_rest_trains(tok):
    t = rollout_threads()
    t["children"][0][0] = {"id": "0.0", "prompt": 7, "segments": None}  # unreadable thread
    t["children"][0][1]["segments"] = [""]  # a thread that generated nothing
    stats = L.BuildStats()
    seqs = L.rollout_sequences(t, 0, tok, 512, stats)
    assert [s.thread for s in seqs] == ["0", "0"]
    assert stats.malformed_threads == 1 and stats.empty_segments == 1
    # and a whole record without a thread tree trains nothing, without raising
    assert L.rollout_sequences(None, 0, tok, 512, L.BuildStats()) == []


def _batch_for(tok, rollouts, advs, n_rollouts):
    seqs = [s for i, t in enumerate(rollouts) for s in L.rollout_sequences(t, i, tok, 512, L.BuildStats())]
    w = L.token_weights(seqs, n_rollouts)
    return seqs, L.collate(seqs, w, [advs[s.rollout] for s in seqs], tok.pad_token_id)


def test_loss_of_a_hand_built_group_equals_the_formula(tok):
    policy, ref = tiny_model(tok, 0), tiny_model(tok, 1)
    sos = {"id": "0", "prompt": "Current State: 24:[4, 3], Operations: []", "segments": ["\nNo solution found.\n"],
           "joins": [], "children": [], "status": "done"}
    rollouts, advs, clip, beta = [rollout_threads(), sos], [1.5, -0.7], 0.2, 0.1
    seqs, batch = _batch_for(tok, rollouts, advs, n_rollouts=2)
    logp, _ = L.token_logprobs(policy, batch)
    with torch.no_grad():
        ref_logp = L.token_logprobs(ref, batch)[0]
    g = torch.Generator().manual_seed(0)
    old = logp.detach() + 0.5 * torch.randn(logp.shape, generator=g)  # ratios inside and outside the clip
    loss, sums = L.grpo_loss(logp, old, ref_logp, batch, clip, beta)
    assert sums["clipped"] > 0

    # by hand: per token, mean per segment, mean per rollout over its segments, mean over rollouts
    lp, o, r = logp.detach().tolist(), old.tolist(), ref_logp.tolist()
    per_rollout = {0: [], 1: []}
    for b, s in enumerate(seqs):
        a, terms = advs[s.rollout], []
        for j in range(len(s.ids) - 1):
            if not s.trained[j + 1]:
                continue
            ratio = math.exp(lp[b][j] - o[b][j])
            pg = -min(ratio * a, min(max(ratio, 1 - clip), 1 + clip) * a)
            d = r[b][j] - lp[b][j]
            terms.append(pg + beta * (math.exp(d) - d - 1))
        per_rollout[s.rollout].append(sum(terms) / len(terms))
    want = sum(sum(v) / len(v) for v in per_rollout.values()) / 2
    assert len(per_rollout[0]) == 4 and len(per_rollout[1]) == 1  # published: / segments of the rollout
    assert loss.item() == kernel_approx(want)

    # any split into micro-batches sums to the same loss
    parts = 0.0
    for idx in L.micro_batches(seqs, 200):
        w = L.token_weights(seqs, 2)
        b = L.collate([seqs[i] for i in idx], [w[i] for i in idx], [advs[seqs[i].rollout] for i in idx], tok.pad_token_id)
        lp2, _ = L.token_logprobs(policy, b)
        rl2 = L.token_logprobs(ref, b)[0].detach()
        parts += L.grpo_loss(lp2, lp2.detach(), rl2, b, clip, beta)[0].item()
    full = L.grpo_loss(logp, logp.detach(), ref_logp, batch, clip, beta)[0].item()
    assert len(L.micro_batches(seqs, 200)) > 1 and parts == kernel_approx(full)


def test_masked_positions_get_no_gradient(tok):
    policy = tiny_model(tok)
    _, batch = _batch_for(tok, [rollout_threads()], [1.0], 1)
    logits = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.detach().requires_grad_()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
    loss, _ = L.grpo_loss(logp, logp.detach() + 0.05, logp.detach() - 0.1, batch, 0.2, 0.01)
    loss.backward()
    grad = logits.grad[:, :-1].abs().sum(-1)
    assert (grad[batch.weight == 0] == 0).all()  # prompt, join text, earlier segments, padding
    assert (grad[batch.weight > 0] > 0).all()
    assert logits.grad[:, -1].abs().sum() == 0


def test_all_equal_group_gives_no_policy_gradient(tok):
    policy = tiny_model(tok)
    adv = L.group_advantages(torch.tensor([[1.0, 1.0]])).flatten().tolist()
    _, batch = _batch_for(tok, [rollout_threads(), rollout_threads()], adv, 2)
    logp, _ = L.token_logprobs(policy, batch)
    loss, _ = L.grpo_loss(logp, logp.detach(), logp.detach(), batch, 0.2, 0.0)
    loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in policy.parameters())


# ---------------------------------------------------------------------------- end to end


def test_cli_smoke_writes_metrics_and_final_model(files, tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"init: {files / 'model'}\nproblems: {files / 'train.jsonl'}\nval_problems: {files / 'val.jsonl'}\n"
                   f"out_dir: {out}\nbatch_size: 2\ngroup_size: 2\nrollout:\n  context: 48\nmax_slots: 8\n"
                   "eval_every: 1\n")
    rc = main(["train", "rl", "--config", str(cfg), "--set", "max_steps=2", "--set", "val_limit=1"])
    assert rc == 0
    steps = [m for m in metrics(out) if "reward" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert {"reward", "kl", "accuracy", "children", "total_tokens", "sequential_tokens", "clip_frac",
                "entropy", "rollout_tok_s", "train_tok_s"} <= set(m)
    assert [m["step"] for m in metrics(out) if "val_accuracy" in m] == [0, 1, 2]
    info = json.loads((out / "final" / "apr.json").read_text())
    assert info["method"] == "apr" and info["preset"] == "test"
    assert info["rl_steps"] == 2 and "2 steps of GRPO" in (out / "final" / "README.md").read_text()


def _index_reward(record, problem):
    return float(record["index"] % 2)  # a varied reward, so groups have advantages


def _final_weights(path):
    from safetensors.torch import load_file

    return load_file(path / "final" / "model.safetensors")


def test_learns_and_resumes_exactly(files, tmp_path):
    from apr.train.grpo import train_rl

    a = tmp_path / "a"
    train_rl(config(files, a, "save_every=1"), reward_fn=_index_reward)
    m = [r for r in metrics(a) if "reward" in r]
    assert all(r["reward"] == 0.5 and r["zero_adv_groups"] == 0 for r in m)
    assert m[1]["kl"] > 0  # the second step's policy has moved away from the initial model
    b = tmp_path / "b"
    (b / "checkpoints").mkdir(parents=True)
    shutil.copytree(a / "checkpoints" / "step_0000001", b / "checkpoints" / "step_0000001")
    (b / "checkpoints" / "latest").write_text("step_0000001")
    train_rl(config(files, b), resume=True, reward_fn=_index_reward)
    wa, wb = _final_weights(a), _final_weights(b)
    # exact, not tests/tolerance.py: both runs use this process's kernels, so a resume replays bit for bit
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    keys = ("reward", "kl", "loss", "clip_frac", "entropy", "total_tokens")
    pick = lambda out: [{k: r[k] for k in keys} for r in metrics(out) if r.get("step") == 2 and "reward" in r]
    assert pick(a) == pick(b)


# ---------------------------------------------------------------------------- bad input


def test_refuses_training_problems_in_the_validation_set(files, tmp_path):
    from apr.train.grpo import RLTrainer

    with pytest.raises(UserError, match="also validation problems"):
        RLTrainer(config(files, tmp_path / "o", f"val_problems={files / 'train.jsonl'}"))


def test_refuses_a_checkpoint_of_another_preset(files, tmp_path):
    from apr.train.grpo import RLTrainer

    out = tmp_path / "o"
    ck = out / "checkpoints" / "step_0000001"
    ck.mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("step_0000001")
    (ck / "meta.json").write_text(json.dumps({"kind": "rl", "preset": "small", "tokenizer": "x", "method": "apr"}))
    with pytest.raises(UserError, match="checkpoint has preset 'small'"):
        RLTrainer(config(files, out), resume=True)
    with pytest.raises(UserError, match="resume it"):
        RLTrainer(config(files, out))


def test_a_raising_reward_skips_the_step_with_its_reason(files, tmp_path):
    from apr.train.grpo import train_rl

    calls = {"n": 0}

    def flaky(record, problem):
        calls["n"] += 1
        if calls["n"] == 1:  # in the first step
            raise ValueError("boom")
        return 0.0

    out = tmp_path / "o"
    train_rl(config(files, out), reward_fn=flaky)
    m = metrics(out)
    assert m[0] == {"step": 1, "skipped": "reward function raised ValueError: boom"}
    assert "reward" in m[1] and m[1]["step"] == 2


def test_a_server_that_cannot_reload_weights_fails_before_training(files, tmp_path):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": [{"id": "m"}]}).encode()
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        from apr.train.grpo import RLTrainer

        url = f"http://127.0.0.1:{srv.server_address[1]}"
        with pytest.raises(UserError, match="cannot reload weights"):
            RLTrainer(config(files, tmp_path / "o", "engine=server", f"server={url}", "max_slots=64"))  # a local-engine setting back at its default
        assert not (tmp_path / "o" / "metrics.jsonl").exists()
    finally:
        srv.shutdown()


def test_an_engine_without_weight_reload_is_a_one_line_error(files, tmp_path, tok):
    from apr.engine.scripted import ScriptedEngine
    from apr.train.grpo import RLTrainer

    trainer = RLTrainer(config(files, tmp_path / "o"))
    trainer.cfg.engine = "server"  # push the weights the way a server gets them: reload_weights
    try:
        with pytest.raises(UserError, match="^server could not reload weights: EngineError: this engine cannot"):
            trainer._push_weights(ScriptedEngine(tok, {}))
    finally:
        trainer.engine.close()


def test_an_engine_failure_skips_the_step_and_aborts_its_requests(files, tmp_path):
    from apr.engine.base import EngineError
    from apr.train.grpo import RLTrainer

    out = tmp_path / "o"
    trainer = RLTrainer(config(files, out), reward_fn=_index_reward)
    engine, polls = trainer.engine, {"n": 0}
    real_poll = engine.poll

    def dying_poll():
        polls["n"] += 1
        if polls["n"] == 2:  # requests are queued or running
            raise EngineError("server died")
        return real_poll()

    engine.poll = dying_poll
    try:
        trainer.train()
    finally:
        engine.close()
    m = metrics(out)
    assert m[0] == {"step": 1, "skipped": "engine failed during rollouts: server died"}
    assert "reward" in m[1] and m[1]["step"] == 2  # the next step ran on a clean engine


def test_config_errors_are_one_line(files, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"init: {files / 'model'}\nproblems: {files / 'train.jsonl'}\n")
    assert main(["train", "rl", "--config", str(cfg), "--set", "group_size=1"]) == 2
    assert main(["train", "rl", "--config", str(cfg), "--set", "reward=nope"]) == 2
    assert main(["train", "rl", "--config", str(cfg), "--set", "engine=server"]) == 2
    assert main(["train", "rl", "--config", str(cfg), "--set", "rollout.child_budget=0"]) == 2
    assert main(["train", "rl", "--config", str(cfg), "--set", "rollout.temperature=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 5 and all(e.startswith("apr: error: config:") for e in err)
    assert err[3] == "apr: error: config: `rollout.child_budget` must be >= 1, got 0"


def test_rollouts_are_the_runtime_settings_and_old_flat_keys_still_work(files, tmp_path, caplog):
    """The rollout settings are a RuntimeConfig (`rollout:`); the top-level keys they were
    before still load, each with a deprecation warning, and `sub_call_budget` is `child_budget`."""
    new = config(files, tmp_path / "a", "rollout.child_budget=3", "rollout.max_in_flight=8", "rollout.join_rule=verified",
                 "rollout.max_depth=2")
    assert (new.rollout.child_budget, new.rollout.max_in_flight, new.rollout.join_rule, new.rollout.max_depth) == \
        (3, 8, "verified", 2) and new.rollout.context == 48
    cfg = tmp_path / "old.yaml"
    cfg.write_text('context: 64\nsub_call_budget: 3\nmethod: ""\ntemperature: 0.7\nmax_in_flight: 8\n')
    with caplog.at_level("WARNING"):
        old = load_config(cfg, [f"init={files / 'model'}", f"problems={files / 'train.jsonl'}", "top_k=5"], cls=RLConfig)
    r = old.rollout
    assert (r.context, r.child_budget, r.method, r.temperature, r.max_in_flight, r.top_k) == (64, 3, None, 0.7, 8, 5)
    assert "`sub_call_budget` is deprecated; use `rollout.child_budget`" in caplog.text
    assert "`top_k` is deprecated; use `rollout.top_k`" in caplog.text
    cfg.write_text("context: 64\nrollout:\n  context: 128\n")
    with pytest.raises(UserError, match="`context` \\(deprecated\\) and `rollout.context` disagree"):
        load_config(cfg, [f"init={files / 'model'}", f"problems={files / 'train.jsonl'}"], cls=RLConfig)
    with pytest.raises(UserError, match="`rollout.seed` is not used"):
        config(files, tmp_path / "b", "rollout.seed=3")


def test_a_child_budget_for_an_sos_model_is_refused_by_its_key(files, tmp_path):
    from apr.train.grpo import train_rl

    with pytest.raises(UserError, match="config: `rollout.child_budget` applies to APR only; this run's method is sos"):
        train_rl(config(files, tmp_path / "s", "rollout.method=sos", "rollout.child_budget=2"))


def test_sos_baseline_has_one_segment_per_rollout(files, tmp_path):
    from apr.train.grpo import train_rl

    out = tmp_path / "sos"
    train_rl(config(files, out, "rollout.method=sos", "max_steps=1"), reward_fn=_index_reward)
    (m,) = [r for r in metrics(out) if "reward" in r]
    assert m["segments"] == 1.0 and m["children"] == 0 and m["trained_tokens"] > 0


def test_two_processes_learn_what_one_does(files, tmp_path):
    """torchrun with 2 CPU processes: same rollouts (seeds are per sample), summed gradients."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    (tmp_path / "rw.py").write_text('def r(record, problem):\n    return float(record["index"] % 2)\n')
    # the reward module's folder, then whatever made `apr` importable here (the code under test)
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    common = [f"init={files / 'model'}", f"problems={files / 'train.jsonl'}", f"val_problems={files / 'val.jsonl'}",
              "max_steps=2", "batch_size=2", "group_size=2", "rollout.context=48", "max_slots=8", "eval_every=0",
              "eval_at_start=false", "device=cpu", "lr=1e-3", f"reward={tmp_path / 'rw.py'}:r", "trust_reward_code=true"]
    sets = lambda out: [a for s in common + [f"out_dir={out}"] for a in ("--set", s)]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "apr"]
    for cmd, out in (([sys.executable, "-m", "apr"], "one"), (torchrun, "two")):
        r = subprocess.run(cmd + ["train", "rl", "--config", str(cfg)] + sets(tmp_path / out),
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    a, b = (load_file(tmp_path / o / "final" / "model.safetensors") for o in ("one", "two"))
    init = load_file(files / "model" / "model.safetensors")
    assert max((a[k] - init[k]).abs().max().item() for k in a) > 1e-3  # it learned
    assert all(tensors_close(a[k], b[k]) for k in a)


def test_a_bf16_model_folder_trains_in_fp32(files, tmp_path):
    """Exported models are bf16; AdamW steps on bf16 weights would round away or jump a ulp."""
    from apr.model_folder import load_model, save_model
    from apr.train.grpo import train_rl

    model, tok, info = load_model(files / "model")
    save_model(model.to(torch.bfloat16), tok, info, tmp_path / "bf16")
    out = tmp_path / "run"
    train_rl(config(files, out, f"init={tmp_path / 'bf16'}", "max_steps=1", "inner_steps=1"), reward_fn=_index_reward)
    m = [r for r in metrics(out) if "reward" in r]
    # one inner step: the policy that scored the tokens is the reference itself, in fp32
    assert m[0]["kl"] == kernel_approx(0.0)
    assert _final_weights(out)["model.embed_tokens.weight"].dtype == torch.float32


def test_warmup_ramps_the_learning_rate(files, tmp_path):
    from apr.train.grpo import train_rl

    out = tmp_path / "run"
    train_rl(config(files, out, "warmup_steps=4", "lr=1e-3"), reward_fn=_index_reward)
    assert [m["lr"] for m in metrics(out) if "reward" in m] == pytest.approx([2.5e-4, 5e-4])
