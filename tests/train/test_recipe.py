"""The CPU recipe's parts (issue 17): arithmetic-fact documents, a training budget in CPU
seconds, teacher-forced arithmetic measures, and the recipe probe at toy size."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from apr.checker import apply_op
from apr.countdown import TaskConfig, generate
from apr.datasets import demonstration
from apr.search import SosConfig
from apr.tokenizer import build_tokenizer
from apr.train import drills, packing
from apr.train.config import load_config

ROOT = Path(__file__).resolve().parents[2]
TASK3 = TaskConfig(num_count=3)


@pytest.fixture(scope="module")
def sos_records():
    return [("x.jsonl", i + 1, demonstration(p, i, 0, SosConfig())) for i, p in enumerate(generate(40, seed=3, task=TASK3))]


def test_arithmetic_facts_are_true_large_results_in_trace_syntax(sos_records):
    demos = packing.demonstrations(sos_records, build_tokenizer(), budget_prefix=False)
    chars = sum(len(s.text) - s.new_from for d in demos for s in d.strings)  # each character once
    facts = drills.arithmetic_facts(demos, 0.25, seed=0)
    text = "".join(s.text for d in facts for s in d.strings)
    assert 0.25 * chars <= len(text) < 0.25 * chars + 2000  # the share asked, to within one document
    lines = text.splitlines()
    assert len(lines) == drills.FACT_LINES_PER_DOC * len(facts)
    for line in lines:
        m = re.fullmatch(r"Exploring Operation: (\d+)([-+*/])(\d+)=(\d+)", line)
        assert m, line
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        assert apply_op(a, op, b) == c and c >= drills.FACT_MIN_RESULT
    assert drills.arithmetic_facts(demos, 0.25, seed=0)[0].strings[0].text == facts[0].strings[0].text  # seeded
    assert drills.arithmetic_facts(demos, 0.0, seed=0) == []
    # min_result 0 draws from every operation: small results too, each one true
    every = "".join(s.text for d in drills.arithmetic_facts(demos, 0.25, seed=0, min_result=0) for s in d.strings)
    results = [int(m[4]) for m in re.finditer(r"Exploring Operation: (\d+)([-+*/])(\d+)=(\d+)", every)]
    assert min(results) < 10 and all(apply_op(int(m[1]), m[2], int(m[3])) == int(m[4])
                                     for m in re.finditer(r"Exploring Operation: (\d+)([-+*/])(\d+)=(\d+)", every))


def test_config_checks_recipe_fields():
    from apr.errors import UserError

    cfg = load_config(None, ["data=x.jsonl", "time_budget_s=60", "time_budget_clock=cpu", "arithmetic_facts=0.5"])
    assert (cfg.time_budget_clock, cfg.arithmetic_facts) == ("cpu", 0.5)
    with pytest.raises(UserError, match="`time_budget_clock` applies to a time budget"):  # used or refused
        load_config(None, ["data=x.jsonl", "time_budget_clock=cpu"])
    with pytest.raises(UserError, match="time_budget_clock"):
        load_config(None, ["data=x.jsonl", "time_budget_clock=gpu"])
    with pytest.raises(UserError, match="arithmetic_facts"):
        load_config(None, ["data=x.jsonl", "arithmetic_facts=-1"])
    with pytest.raises(UserError, match="arithmetic_facts_min_result"):
        load_config(None, ["data=x.jsonl", "arithmetic_facts=0.2", "arithmetic_facts_min_result=-1"])
    with pytest.raises(UserError, match="applies to arithmetic facts"):  # used or refused
        load_config(None, ["data=x.jsonl", "arithmetic_facts_min_result=0"])


def test_teacher_forced_counts_every_result_and_classes(sos_records):
    """A model that predicts nothing right gets every result wrong; the classes partition
    the results (by digits, and first-time vs copied)."""
    import torch

    from apr.model_folder import make_model
    from apr.train.teacher_forced import measure

    tok = build_tokenizer("apr-num99")
    torch.manual_seed(0)
    model = make_model("cpu-mini", tok)
    texts = [r["search_path"] for _, _, r in sos_records[:5]]
    out = measure(model, tok, texts)
    res = out["results"]
    n = sum(len(re.findall("Exploring Operation:", t)) for t in texts)
    assert res["all"]["n"] == n
    assert sum(res[k]["n"] for k in res if k.startswith("digits:")) == n
    assert res["first"]["n"] + res.get("copied", {"n": 0})["n"] == n
    assert out["result_error"] > 0.9 and out["loss_per_char"] > 0.5
    # skipped spans are read but neither scored nor counted: the second half of each text
    half = measure(model, tok, texts, [[(len(t) // 2, len(t))] for t in texts])
    counted = sum(len(re.findall("Exploring Operation:", t[: len(t) // 2 - 12])) for t in texts)
    assert counted <= half["results"]["all"]["n"] < n
    assert half["loss_per_token"] != pytest.approx(out["loss_per_token"], rel=1e-6)


def test_teacher_forced_benchmark_scores_apr_threads_once(tmp_path, apr_records):
    """benchmarks/teacher_forced.py on APR demonstrations: every result a thread wrote is
    counted once (not again in a later segment's string, never in join text)."""
    from apr.model_folder import make_model, save_model, ModelInfo
    tok = build_tokenizer()
    save_model(make_model("cpu-mini", tok), tok, ModelInfo(method="apr", preset="cpu-mini", budget_prefix=True,
                                                           task=TASK3.as_dict()), tmp_path / "m")
    traces = tmp_path / "t.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for _, _, r in apr_records[:6]))
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/teacher_forced.py"), "--traces", str(traces),
                        str(tmp_path / "m"), "--table", "30"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    from apr.protocol import thread_from_record

    own = sum(len(re.findall("Exploring Operation:", t.own_text()))
              for _, _, rec in apr_records[:6] for t in thread_from_record(rec).walk())
    row = r.stdout.strip().splitlines()[-1]
    cells = row.split("|")
    assert f"({own})" in cells[3]
    # the table's 30 products: 3 or 4 digits, every one counted
    assert sum(int(re.search(r"\((\d+)\)", c).group(1)) for c in cells[-4:-2] if "(" in c) == 30
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks/teacher_forced.py"), "--traces", str(traces),
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not a model folder" in bad.stderr.strip().splitlines()[-1]


def test_probe_recipe_at_toy_size(tmp_path):
    """The probe end to end: data, one arm trained for a few CPU seconds, teacher-forced and
    free-running measures, the table."""
    out = tmp_path / "probe"
    cmd = [sys.executable, str(ROOT / "benchmarks/probe_recipe.py"), "--out", str(out), "--arms", "num99",
           "--minutes", "0.05", "--train-problems", "60", "--heldout", "4", "--fresh", "3", "--parallel", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:] + (out / "arms/num99/log.txt").read_text()[-2000:]
    result = json.loads((out / "arms/num99/result.json").read_text())
    assert result["vocab"] == len(build_tokenizer("apr-num99"))
    assert result["fresh"]["problems"] == 3 and result["teacher_forced"]["results"]["all"]["n"] > 0
    assert "| num99 | tokenizer=apr-num99 |" in r.stdout
    info = json.loads((out / "arms/num99/train/final/apr.json").read_text())
    assert info["tokenizer_name"] == "apr-num99"


def drills_made(make, demos, seed: int, at: int):
    """`make(demos, 0.5, seed)` checked as every kind of drill must be: one per two
    demonstrations, none at rate 0, seeded (the same drill `at` again), and no trained EOS."""
    made = make(demos, 0.5, seed=seed)
    assert len(made) == round(0.5 * len(demos)) and all(not d.stops for d in made)
    assert make(demos, 0.5, seed=seed)[at].strings[0].text == made[at].strings[0].text  # seeded
    assert make(demos, 0.0, seed=seed) == []
    return made


def trained_text(drill, tok) -> str:
    """What a drill's training string trains, checked to carry no EOS once packed."""
    from apr.train.packing import encode_many

    (ids, trained), = encode_many([drill.strings[0]], tok)
    built = packing.build_packed([drill], tok, 1024, False, packing.DataStats())
    assert (built.targets[0] != packing.IGNORE).sum() == trained[1:-1].sum()  # EOS not a target
    return tok.decode(ids[1:-1][trained[1:-1]])


def test_node_drills_name_another_node_and_train_only_its_state(sos_records):
    from apr import protocol

    tok = build_tokenizer()
    demos = packing.demonstrations(sos_records, tok, budget_prefix=False)
    made = drills_made(drills.node_drills, demos, seed=1, at=3)
    sources = {s.text for d in demos for s in d.strings}
    for d in made:
        ts = d.strings[0]
        head, state = ts.text[: ts.new_from], ts.text[ts.new_from:]
        before = head[: head.rstrip("\n").rfind("\n") + 1]
        assert any(s.startswith(before) for s in sources)  # a real trace, cut at a move
        last = protocol.node_moves(ts.text)[-1]  # the drill's move: to a node the trace generated
        assert ts.text[last.at:].startswith("Moving to Node #") and last.written == last.named
    # the drills differ from the demonstrations' own moves somewhere (another node named)
    assert any(d.strings[0].text not in "".join(sources) for d in made)
    # only the state line carries loss, and no EOS: a drill does not teach stopping
    assert trained_text(made[0], tok) == made[0].strings[0].text[made[0].strings[0].new_from:]


@pytest.mark.parametrize("key", ["node_drills", "goal_drills", "product_drills"])
def test_config_checks_drill_rates(key):
    from apr.errors import UserError

    assert getattr(load_config(None, ["data=x.jsonl", f"{key}=0.5"]), key) == 0.5
    with pytest.raises(UserError, match=key):
        load_config(None, ["data=x.jsonl", f"{key}=-1"])


@pytest.fixture(scope="module")
def apr_records():
    from apr.search import AprConfig

    return [("x.jsonl", i + 1, demonstration(p, i, 0, AprConfig())) for i, p in enumerate(generate(60, seed=4, task=TASK3))]


def test_near_targets_are_close_or_digit_swaps_and_never_the_result():
    assert drills.near_targets(21, {21, 23, 12, 30, 31, 40}) == [12, 23, 30]
    assert drills.near_targets(5, set(range(100))) == [n for n in range(0, 15) if n != 5]
    assert drills.near_targets(50, {50}) == []


def test_goal_drills_pair_true_operations_with_near_or_equal_targets_and_train_only_verdicts(apr_records):
    from apr import protocol

    tok = build_tokenizer()
    demos = packing.demonstrations(apr_records, tok, budget_prefix=True)
    made = drills_made(drills.goal_drills, demos, seed=2, at=1)
    targets = {p.target for p in generate(60, seed=4, task=TASK3)}
    pair = re.compile(r"Exploring Operation: (\d+)([-+*/])(\d+)=(\d+), Resulting Numbers: \[(\d+)\]\n"
                      r"(\d+),(\d+) (equal: Goal Reached|unequal: No Solution)\n")
    verdicts = {"equal": 0, "near": 0}
    for d in made:
        text = d.strings[0].text
        pairs = pair.findall(text)
        assert len(pairs) == drills.GOAL_LINES_PER_DOC and "".join(m.group(0) for m in pair.finditer(text)) == text
        for a, op, b, x, shown, x2, t, verdict in pairs:
            assert apply_op(int(a), op, int(b)) == int(x) == int(shown) == int(x2)  # a true operation
            assert int(t) in targets  # a target the demonstrations have
            assert verdict == protocol.goal_line(int(x), int(t)).split(" ", 1)[1].rstrip("\n")
            if x == t:
                verdicts["equal"] += 1
            else:
                assert int(t) in drills.near_targets(int(x), targets)
                verdicts["near"] += 1
    assert verdicts["equal"] > 0 and verdicts["near"] > verdicts["equal"]  # mostly near misses
    # only the verdicts (and their newlines) carry loss, and no EOS
    learned = trained_text(made[0], tok)
    assert learned.replace("unequal: No Solution", "").replace("equal: Goal Reached", "") == "\n" * drills.GOAL_LINES_PER_DOC


def test_product_drills_are_true_large_products_and_train_only_results(sos_records):
    tok = build_tokenizer()
    demos = packing.demonstrations(sos_records, tok, budget_prefix=False)
    made = drills_made(drills.product_drills, demos, seed=3, at=2)
    line = re.compile(r"Exploring Operation: (\d+)\*(\d+)=(\d+)\n")
    written = {m.group(0) for d in demos for ts in d.strings for m in re.finditer(r"\d+\*\d+=\d+", ts.text)}
    for d in made:
        text = d.strings[0].text
        lines = line.findall(text)
        assert len(lines) == drills.PRODUCT_LINES_PER_DOC and "".join(m.group(0) for m in line.finditer(text)) == text
        for a, b, c in lines:
            assert int(a) * int(b) == int(c) >= drills.FACT_MIN_RESULT and f"{a}*{b}={c}" in written
    # only the results' digits carry loss: neither operands nor newlines, and no EOS
    assert trained_text(made[0], tok) == "".join(c for _, _, c in line.findall(made[0].strings[0].text))
    assert drills.product_drills(demos, 0.5, seed=3, min_result=10**9) == []


def test_product_drills_of_apr_threads_come_from_what_each_string_adds(apr_records):
    tok = build_tokenizer()
    demos = packing.demonstrations(apr_records, tok, budget_prefix=True)
    made = drills.product_drills(demos, 1.0, seed=1)
    written = {m.group(0) for d in demos for ts in d.strings for m in re.finditer(r"\d+\*\d+=\d+", ts.text[ts.new_from:])}
    drawn = set(re.findall(r"\d+\*\d+=\d+", "".join(d.strings[0].text for d in made)))
    assert drawn and drawn <= written


def test_drills_refuse_training_their_context():
    from apr.errors import UserError

    with pytest.raises(UserError, match="train_on_inserted"):
        load_config(None, ["data=x.jsonl", "product_drills=1", "train_on_inserted=true"])


def test_product_drills_in_state_read_like_the_trace(sos_records):
    tok = build_tokenizer()
    demos = packing.demonstrations(sos_records, tok, budget_prefix=False)
    made = drills.product_drills(demos, 0.5, seed=4, in_state=True)
    pair = re.compile(r"(Current State: \d+:\[([\d, ]*)\], Operations: \[[^\]]*\]\n)"
                      r"Exploring Operation: (\d+)\*(\d+)=(\d+), Resulting Numbers: \[[\d, ]*\]\n")
    states = {m.group(0) for d in demos for ts in d.strings for m in re.finditer(r"Current State: [^\n]*\n", ts.text)}
    for d in made[:5]:
        text = d.strings[0].text
        pairs = pair.findall(text)
        assert len(pairs) == drills.PRODUCT_LINES_PER_DOC and "".join(m.group(0) for m in pair.finditer(text)) == text
        for state, nums, a, b, c in pairs:
            assert state in states and int(a) * int(b) == int(c) >= drills.FACT_MIN_RESULT
            assert {a, b} <= set(nums.split(", "))  # the operands are the state's numbers
        assert trained_text(d, tok) == "".join(c for *_, c in pairs)
    assert load_config(None, ["data=x.jsonl", "product_drills=1", "product_drills_in_state=true"]).product_drills_in_state
    from apr.errors import UserError

    with pytest.raises(UserError, match="applies to product drills"):
        load_config(None, ["data=x.jsonl", "product_drills_in_state=true"])
