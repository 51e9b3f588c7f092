"""Exact arithmetic (issue 20) in GRPO: forced tokens (the results and goal lines the engine
wrote) carry no policy gradient and no KL; their spans, kept per segment relative to it, land
on the right characters of the training strings; `rollout.arithmetic: exact` trains, logs forced tokens,
marks the saved model (apr.json `rl_arithmetic`, model card) and its checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from support.models import save_apr_model_dir, tiny_model  # noqa: E402,F401
from support.traces import solver_traces  # noqa: E402
from test_arithmetic_exact import DEVICE, OP_LINE, PROBS, corrupt, follow, forced_texts, steer  # noqa: E402

from apr import protocol as P  # noqa: E402
from apr.engine.local import LocalEngine  # noqa: E402
from apr.engine.scripted import script_from_thread  # noqa: E402
from apr.errors import UserError  # noqa: E402
from apr.runtime import Runtime, RuntimeConfig  # noqa: E402
from apr.tokenizer import build_tokenizer  # noqa: E402
from apr.train import rl_loss as L  # noqa: E402
from apr.train.config import RLConfig, load_config  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_apr_model_dir(tmp_path_factory.mktemp("exact_rl") / "model")


@pytest.fixture(scope="module")
def exact_records(model_dir):
    """APR solver traces with corrupted results, written back by exact arithmetic."""
    trees = solver_traces(3)
    script: dict[str, str] = {}
    for t in trees:
        script_from_thread(t, script)
    eng = LocalEngine(model_dir, max_slots=48, max_len=2048, device=DEVICE, dtype="float32")
    steer(eng, follow(eng.tokenizer, {ctx: corrupt(seg) for ctx, seg in script.items()}))
    cfg = RuntimeConfig(method="apr", context=2048, arithmetic="exact", temperature=0.0)
    return Runtime(eng, cfg).run(enumerate(PROBS[:3]))


def test_forced_spans_land_on_the_results_of_each_training_string(exact_records):
    tok = build_tokenizer()
    later = 0  # forced results in segments after the first: their spans are shifted by new_from
    for rec in exact_records:
        for th in P.Thread.from_json(rec.threads).walk():
            for ts in th.strings():
                own = ts.text[ts.new_from:]
                results = forced_texts(ts.text, ts.new_from)  # results and goal lines
                assert [ts.text[a:b] for a, b in ts.forced] == results
                later += len(results) if ts.new_from > len(th.prompt) else 0
                ids, trained = L.encode_segment(ts, False, tok)
                offsets = tok(ts.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
                in_forced = [any(s < b and max(e, s + 1) > a for a, b in ts.forced) for s, e in offsets]
                assert not any(t and f for t, f in zip(trained[1:], in_forced))  # forced: never trained
                # the operands and operators the model chose still train
                chosen = [k for k, (s, _) in enumerate(offsets) if s >= ts.new_from and not in_forced[k]
                          and any(m.start(1) <= s - ts.new_from < m.end(3) for m in OP_LINE.finditer(own))]
                assert all(trained[k + 1] for k in chosen)
    assert later > 0


def crafted(forced: bool) -> dict:
    seg = "\nExploring Operation: 9-3=6, Resulting Numbers: [4, 6]\nNo solution found.\n"
    at = seg.index("=6") + 1
    return {"id": "0", "prompt": "Moving to Node #0\nCurrent State: 24:[4, 9, 3], Operations: []", "segments": [seg],
            "joins": [], "children": [], "status": "done", "tokens": 20,
            **({"forced_tokens": 1, "forced_spans": [[[at, at + 1]]]} if forced else {})}


def test_a_forced_token_gets_no_policy_gradient_and_no_kl():

    tok = build_tokenizer()
    policy = tiny_model(tok)
    grads, weights = {}, {}
    for forced in (False, True):
        seqs = L.rollout_sequences(crafted(forced), 0, tok, 512, L.BuildStats())
        batch = L.collate(seqs, L.token_weights(seqs, 1), [1.0], tok.pad_token_id)
        logits = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.detach().requires_grad_()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)
        # old and reference log-probs apart from the policy's: both the ratio and the k3 KL have gradients
        loss, _ = L.grpo_loss(logp, logp.detach() + 0.05, logp.detach() - 0.1, batch, 0.2, 0.5)
        loss.backward()
        grads[forced], weights[forced] = logits.grad[0, :-1].abs().sum(-1), batch.weight[0]
    six = [j for j, t in enumerate(batch.targets[0].tolist()) if tok.convert_ids_to_tokens(t) == "6"][0]  # predicts `6`
    assert weights[False][six] > 0 and grads[False][six] > 0  # trained when the model wrote it
    assert weights[True][six] == 0 and grads[True][six] == 0  # forced: nothing flows from it
    others = (weights[True] > 0).nonzero().flatten()
    assert len(others) == (weights[False] > 0).sum() - 1 and (grads[True][others] > 0).all()


@pytest.fixture(scope="module")
def rl_files(tmp_path_factory):
    from apr.countdown import TaskConfig, generate

    d = tmp_path_factory.mktemp("exact_rl_files")
    with open(d / "train.jsonl", "w") as f:
        for p in generate(4, seed=3, task=TaskConfig(num_count=4, num_max=20, target_min=10, target_max=30)):
            f.write(json.dumps(p.to_dict()) + "\n")
    (d / "val.jsonl").write_text(json.dumps({"nums": [1, 2, 3, 4], "target": 24}) + "\n")
    return d


def rl_config(model_dir, files, out, *extra) -> RLConfig:
    keys = [f"init={model_dir}", f"problems={files / 'train.jsonl'}", f"val_problems={files / 'val.jsonl'}",
            f"out_dir={out}", "max_steps=1", "batch_size=2", "group_size=2", "rollout.context=48", "max_slots=8",
            "eval_every=0", "eval_at_start=false", "save_every=1", "keep_checkpoints=1", "val_limit=1"]
    return load_config(None, keys + list(extra), cls=RLConfig)


def test_rl_with_exact_rollouts_marks_the_model_and_its_checkpoints(model_dir, rl_files, tmp_path):
    from apr.train.grpo import train_rl

    out = tmp_path / "rl"
    final = train_rl(rl_config(model_dir, rl_files, out, "rollout.arithmetic=exact", "max_steps=2"), progress=False)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("forced_tokens" in m for m in steps)
    info = json.loads((final / "apr.json").read_text())
    assert info["rl_arithmetic"] == "exact" and "exact arithmetic" in (final / "README.md").read_text()
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert json.loads((out / "checkpoints" / latest / "meta.json").read_text())["arithmetic"] == "exact"
    with pytest.raises(UserError, match="holds a finished run"):  # a finished run is never resumed
        train_rl(rl_config(model_dir, rl_files, out, "max_steps=3"), resume=True, progress=False)
    unfinished = tmp_path / "rl_unfinished"  # the same run before its final model: resumable
    shutil.copytree(out, unfinished, ignore=shutil.ignore_patterns("final"))
    with pytest.raises(UserError, match="checkpoint has arithmetic 'exact'"):
        train_rl(rl_config(model_dir, rl_files, unfinished, "max_steps=3"), resume=True, progress=False)
    from apr.report_rl import write_rl_report

    md = write_rl_report([str(out)], tmp_path / "report").read_text()
    assert "| apr, exact arithmetic `" in md
    # a model trained from it keeps the mark, whatever its own rollouts
    again = train_rl(rl_config(final, rl_files, tmp_path / "rl2", "save_every=0"), progress=False)
    assert json.loads((again / "apr.json").read_text())["rl_arithmetic"] == "exact"
