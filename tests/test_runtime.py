"""The spawn/join runtime against a scripted engine that replays solver traces token by token."""

import random

import pytest

from apr import protocol as P
from apr.countdown import read_problems
from apr.engine.scripted import ScriptedEngine, script_from_thread
from apr.runtime import Runtime, RuntimeConfig, solve_problems, thread_from_tree
from apr.search import AprConfig, SosConfig, solve_apr, solve_sos
from apr.tokenizer import build_tokenizer

PROBS = read_problems("src/apr/data/countdown4_val1000.jsonl")[:24]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def solver_run(cfg=AprConfig()):
    threads, script = [], {}
    for i, p in enumerate(PROBS):
        t, _ = solve_apr(p.nums, p.target, cfg, random.Random(i))
        threads.append(t)
        script_from_thread(t, script)
    return threads, script


def test_runtime_reproduces_solver_text_and_answers(tok):
    threads, script = solver_run()
    engine = ScriptedEngine(tok, script, max_slots=16)  # fewer slots than threads: queuing
    recs = solve_problems(engine, PROBS, RuntimeConfig(method="apr", context=100_000, max_in_flight=8))
    assert len(recs) == len(PROBS)
    spawned = 0
    for rec, t, p in zip(recs, threads, PROBS):
        assert rec.text == t.text()
        rebuilt = thread_from_tree(rec.threads)
        assert rebuilt.text() == rec.text
        assert len(P.training_strings(rebuilt)) == len(P.training_strings(t))
        assert rec.correct == (P.child_result(t.text()) is not None)
        assert rec.children == t.count_descendants()
        spawned += rec.children
        assert rec.sequential_tokens <= rec.total_tokens
        if rec.children:
            assert rec.sequential_tokens < rec.total_tokens
    assert spawned > 20


def test_nested_spawns_replay(tok):
    cfg = AprConfig(max_depth=2)
    threads, script = solver_run(cfg)
    recs = solve_problems(ScriptedEngine(tok, script), PROBS, RuntimeConfig(method="apr", max_depth=2, context=100_000))
    assert [r.text for r in recs] == [t.text() for t in threads]


def test_resume_prefills_only_the_join_text(tok):
    threads, script = solver_run()
    engine = ScriptedEngine(tok, script)
    solve_problems(engine, PROBS, RuntimeConfig(context=100_000))
    resumes = [(rid, n, reused) for rid, n, reused in engine.log if reused > 0]
    joins = {th.joins[k] for t in threads for th in t.walk() for k in range(len(th.joins))}
    assert len(resumes) == sum(len(th.joins) for t in threads for th in t.walk()) > 10
    join_tokens = sorted(len(tok.encode(j, add_special_tokens=False)) for j in joins)
    for _, n, reused in resumes:
        # everything before the removed spawn block is reused: only the join (plus at most a
        # token at the boundary) is prefilled
        assert n - reused <= join_tokens[-1] + 1
    total_prompt = sum(n for _, n, _ in engine.log)
    assert engine.prefilled < total_prompt / 2


def test_sos_method_runs_serially(tok):
    script = {}
    threads = []
    for i, p in enumerate(PROBS):
        t = solve_sos(p.nums, p.target, SosConfig(), random.Random(i))
        threads.append(t)
        script_from_thread(t, script)
    recs = solve_problems(ScriptedEngine(tok, script), PROBS, RuntimeConfig(method="sos", context=100_000))
    assert [r.text for r in recs] == [t.text() for t in threads]
    assert all(r.children == 0 and r.sequential_tokens == r.total_tokens for r in recs)


def test_context_limit_cuts_a_thread_and_fails_its_problem(tok):
    threads, script = solver_run()
    recs = solve_problems(ScriptedEngine(tok, script), PROBS, RuntimeConfig(context=600))
    cut = [r for r in recs if r.reason == "context window reached"]
    assert cut and not any(r.correct for r in cut)
    assert all(r.longest_thread <= 600 for r in recs)


MALFORMED = {
    "unknown node": "\n<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,7\n<End Calling Sub Searches>\n",
    "no end": "\n<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,0\n",
    "hundreds": "\nExploring Operation: 1+2=3, Resulting Numbers: [3, 3, 4]\nGenerated Node #0,0: 10:[3, 3, 4] Operation: 1+2=3\n<Calling Sub Searches>\n"
    + "".join(f"<Start Sub Search {i} at level 1> Moving to Node #0,0\n" for i in range(300))
    + "<End Calling Sub Searches>\n",
    "garbage": "\n\x00\x01<Calling Sub Searches>\n<<<>>>\n<End Calling Sub Searches>\n",
}


def test_malformed_output_fails_that_problem_only(tok):
    threads, script = solver_run()
    bad = {}
    for k, (name, cont) in enumerate(MALFORMED.items()):
        p = PROBS[k]
        prompt = P.apr_prompt(p.target, p.nums)[:-1]
        bad[k] = name
        script[prompt] = cont
    # a child that never stops: its script is endless text
    p = PROBS[5]
    t = threads[5]
    if t.children:
        child_prompt = t.children[0][0].prompt[:-1]
        script[child_prompt] = "\nMoving to Node #0" * 5000
        bad[5] = "endless child"
    recs = solve_problems(ScriptedEngine(tok, script), PROBS, RuntimeConfig(context=8000, max_children=16))
    assert len(recs) == len(PROBS)
    for k, rec in enumerate(recs):
        if k in bad:
            assert not rec.correct and rec.reason, (bad[k], rec.reason)
        else:
            assert rec.text == threads[k].text()
    assert "unknown node" in recs[0].reason
    assert "too many children" in recs[2].reason
    assert "malformed" in recs[3].reason


def test_a_failed_problem_cancels_its_running_threads(tok):
    """A child cut at the context fails its problem; its sibling that would decode for
    thousands more tokens is cancelled, not drained. Without cancellation it drains."""
    threads, script = solver_run()
    k = next(i for i, t in enumerate(threads) if t.children and len(t.children[0]) >= 2)
    first, second = (c.prompt[:-1] for c in threads[k].children[0][:2])
    script = dict(script)
    script[first] = "\nExploring Operation: 1+1=2" * 400  # cut by the context window early
    script[second] = "\nMoving to Node #0,0" * 3000  # would run far longer
    cfg = RuntimeConfig(context=2000, max_children=16)
    got = {}
    for cancellable in (True, False):
        engine = ScriptedEngine(tok, script, cancellable=cancellable)
        rec = solve_problems(engine, [PROBS[k]], cfg)[0]
        assert not rec.correct and rec.reason == "context window reached"
        statuses = [c["status"] for c in rec.threads["children"][0]]
        got[cancellable] = (rec.total_tokens, statuses, engine.cancelled)
    (tokens_c, statuses_c, cancelled), (tokens_d, statuses_d, _) = got[True], got[False]
    assert cancelled and "cancelled" in statuses_c and "cancelled" not in statuses_d
    assert tokens_c < tokens_d  # the sibling stopped early instead of running to its own cut
