"""The spawn/join runtime against a scripted engine that replays solver traces token by token."""

import pytest
from support.traces import script_of, solver_traces

from apr import protocol as P
from apr.countdown import Problem, read_problems
from apr.datasets import packaged_validation_set
from apr.engine.scripted import ScriptedEngine
from apr.errors import UserError
from apr.model_folder import ModelInfo
from apr.runtime import Runtime, RuntimeConfig, solve_problems
from apr.search import AprConfig
from apr.tokenizer import build_tokenizer

PROBS = read_problems(packaged_validation_set())[:24]


def rt(**settings) -> RuntimeConfig:
    """Runtime settings resolved for a model that says nothing (an APR model, greedy)."""
    return RuntimeConfig(**settings).resolve(ModelInfo())


def solver_run(cfg=AprConfig()):
    threads = solver_traces(len(PROBS), "apr", cfg)
    return threads, script_of(threads)


def test_runtime_reproduces_solver_text_and_answers(tok):
    threads, script = solver_run()
    engine = ScriptedEngine(tok, script, max_slots=16)  # fewer slots than threads: queuing
    recs = solve_problems(engine, PROBS, rt(method="apr", context=100_000, max_in_flight=8))
    assert len(recs) == len(PROBS)
    spawned = 0
    for rec, t, p in zip(recs, threads, PROBS):
        assert rec.text == t.text()
        rebuilt = P.Thread.from_json(rec.threads)
        assert rebuilt.text() == rec.text and rebuilt.to_json() == rec.threads
        assert len(rebuilt.training_strings()) == len(t.training_strings())
        assert rec.correct == (P.goal_line_result(t.text()) is not None)
        assert rec.children == t.count_descendants()
        spawned += rec.children
        assert rec.sequential_tokens <= rec.total_tokens
        if rec.children:
            assert rec.sequential_tokens < rec.total_tokens
    assert spawned > 20


def test_nested_spawns_replay(tok):
    cfg = AprConfig(max_depth=2)
    threads, script = solver_run(cfg)
    recs = solve_problems(ScriptedEngine(tok, script), PROBS, rt(method="apr", max_depth=2, context=100_000))
    assert [r.text for r in recs] == [t.text() for t in threads]


def test_resume_prefills_only_the_join_text(tok):
    threads, script = solver_run()
    engine = ScriptedEngine(tok, script)
    solve_problems(engine, PROBS, rt(context=100_000))
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
    threads = solver_traces(len(PROBS), "sos")
    recs = solve_problems(ScriptedEngine(tok, script_of(threads)), PROBS, rt(method="sos", context=100_000))
    assert [r.text for r in recs] == [t.text() for t in threads]
    assert all(r.children == 0 and r.sequential_tokens == r.total_tokens for r in recs)


def test_context_limit_cuts_a_thread_and_fails_its_problem(tok):
    threads, script = solver_run()
    recs = solve_problems(ScriptedEngine(tok, script), PROBS, rt(context=600))
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
    recs = solve_problems(ScriptedEngine(tok, script), PROBS, rt(context=8000, max_children=16))
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
    cfg = rt(context=2000, max_children=16)
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


# ---------------------------------------------------------------------------- join rules
# Hand-built parents and children (a scripted engine answering by a function of the context):
# where the published rule and the goal-line rule pass on the same path, and where they differ.

NUMS, TARGET = [4, 9, 3], 24
CHILD_PROMPT = "Moving to Node #0,0\nCurrent State: 24:[4, 6], Operations: ['9-3=6']"
ROOT_SEG = ("\nExploring Operation: 9-3=6, Resulting Numbers: [4, 6]\nGenerated Node #0,0: 24:[4, 6] Operation: 9-3=6\n"
            "<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,0\n<End Calling Sub Searches>\n")
SEARCH = "\nExploring Operation: 4*6=24, Resulting Numbers: [24]\n24,24 equal: Goal Reached\n"
PATH = CHILD_PROMPT + "\nExploring Operation: 4*6=24, Resulting Numbers: [24]\n"
CHILDREN = {  # the child's continuation after its prompt -> (what `official` passes on, what `goal-line` does)
    "clean": (SEARCH + PATH + "24,24 equal: Goal Reached\n",) * 2,
    "no solution": (SEARCH.replace("24,24 equal: Goal Reached", "24,25 unequal: No Solution") + "No solution found.\n",) * 2,
    "malformed goal line": (SEARCH + PATH + "71,70 equal: Goal Reached\n", None),
    "text after the path": (SEARCH + PATH + "24,24 equal: Goal Reached\nMoving to Node #0,0,1\n", "clean"),
    "no final newline": (SEARCH + PATH + "24,24 equal: Goal Reached", "clean"),
    "false claim": (SEARCH + PATH.replace("4*6=24", "4+6=24") + "24,24 equal: Goal Reached\n",) * 2,
}


class FnScript(dict):
    """A script answering every context by a function (ScriptedEngine only calls `get`)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def get(self, key, default=None):
        return self.fn(key)


def hand_built_engine(tok, child: str) -> ScriptedEngine:
    root = P.apr_prompt(TARGET, NUMS)[:-1]

    def answer(context: str) -> str:
        if context == root:
            return ROOT_SEG
        if context == CHILD_PROMPT:
            return child
        if context.endswith(P.JOIN_END):  # the parent after its join: it copies a path passed on
            tag = "<Goal Reached in Sub Search 0 at level 1 at Node #0,0>\n"
            if tag in context:
                passed = context[context.index(tag) + len(tag): context.rindex(P.JOIN_END)]
                passed = passed[: passed.index("Goal Reached") + len("Goal Reached\n")]
                return ("24,24 equal: Goal Reached\nMoving to Node #0\nCurrent State: 24:[4, 9, 3], Operations: []\n"
                        + ROOT_SEG.split("<Calling")[0][1:] + passed)
            return "No solution found.\n"
        return ""

    return ScriptedEngine(tok, FnScript(answer))


def joined(tok, child: str, rule: str):
    rec = solve_problems(hand_built_engine(tok, child), [Problem(NUMS, TARGET)], rt(context=4000, join_rule=rule))[0]
    join = rec.threads["joins"][0]
    return rec, P.join_results(join, ["0,0"])[0]


@pytest.mark.parametrize("case", CHILDREN)
def test_official_and_goal_line_joins_on_hand_built_children(tok, case):
    child, goal_line = CHILDREN[case]
    official_expected = P.official_result(CHILD_PROMPT + child)
    if official_expected is not None and not official_expected.endswith("\n"):
        official_expected += "\n"
    goal_line_expected = P.goal_line_result(CHILD_PROMPT + (CHILDREN[goal_line][0] if goal_line == "clean" else child))
    if goal_line is None:
        goal_line_expected = None
    rec_o, got_o = joined(tok, child, "official")
    rec_g, got_g = joined(tok, child, "goal-line")
    assert got_o == official_expected and got_g == goal_line_expected
    assert got_g == P.goal_line_result(CHILD_PROMPT + child)  # goal-line is the rule the solvers write demonstrations by
    assert rec_o.rejected_claims is None and "rejected_claims" not in rec_o.to_json()
    same = case in ("clean", "no solution", "false claim", "no final newline")
    assert (rec_o.text == rec_g.text) == same, case
    if case == "clean":
        assert rec_o.correct and rec_o.text.count("<Goal Reached in Sub Search 0 at level 1 at Node #0,0>\n" + PATH) == 1
    if case == "malformed goal line":  # the published rule passes the path on; the goal-line rule did not
        assert got_o.endswith("71,70 equal: Goal Reached\n") and rec_o.correct
        assert not rec_g.correct and rec_g.reason == "no solution found"
    if case == "text after the path":  # passed on byte for byte, to the end of the child's text
        assert got_o.endswith("Goal Reached\nMoving to Node #0,0,1\n") and got_g.endswith("Goal Reached\n")
    if case == "false claim":  # both rules pass on a path that does not replay; the root's answer is wrong
        assert got_o is not None and not rec_o.correct and "wrong arithmetic" in rec_o.reason


@pytest.mark.parametrize("case", CHILDREN)
def test_verified_joins_reject_false_claims(tok, case):
    child, _ = CHILDREN[case]
    rec_o, got_o = joined(tok, child, "official")
    rec_v, got_v = joined(tok, child, "verified")
    if case == "false claim":
        assert got_o is not None and got_v is None and rec_v.rejected_claims == 1
        assert "<No Solution in Sub Search 0 at level 1 at Node #0,0>" in rec_v.threads["joins"][0]
        assert not rec_v.correct and rec_v.reason == "no solution found"
        assert rec_v.to_json()["rejected_claims"] == 1
    else:  # true claims (and failures) are joined as the published rule joins them
        assert got_v == got_o and rec_v.text == rec_o.text and rec_v.rejected_claims == 0


def test_join_rule_is_checked():
    with pytest.raises(UserError, match="`join_rule` must be one of official, goal-line, verified"):
        RuntimeConfig(join_rule="sometimes")
    with pytest.raises(ValueError, match="resolve it for a model first"):
        Runtime(ScriptedEngine(build_tokenizer(), {}), RuntimeConfig())


@pytest.mark.parametrize("rule", ["official", "goal-line", "verified"])
def test_every_join_rule_replays_solver_traces(tok, rule):
    """On well-formed text (the solvers' own) the three rules join the same paths."""
    threads, script = solver_run()
    recs = solve_problems(ScriptedEngine(tok, script), PROBS[:12], rt(context=100_000, join_rule=rule))
    assert [r.text for r in recs] == [t.text() for t in threads[:12]]
    assert all((r.rejected_claims or 0) == 0 for r in recs)
