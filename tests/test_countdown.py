import json

import pytest

from apr.countdown import (
    Problem,
    TaskConfig,
    expand,
    generate,
    problem_keys,
    read_problems,
    record_key,
    solve,
    successors,
)
from apr.datasets import packaged_validation_set
from apr.errors import UserError

VAL = str(packaged_validation_set())


def test_successors_follow_the_published_rules():
    assert successors(9, 3) == [("9+3=12", 12), ("9*3=27", 27), ("9-3=6", 6), ("9/3=3", 3)]
    assert successors(3, 9) == [("3+9=12", 12), ("3*9=27", 27), ("9-3=6", 6), ("9/3=3", 3)]
    assert ("7/2=3", 3) not in successors(7, 2)  # division only when exact
    assert all(op[1] >= 0 for op in successors(0, 5))
    assert not any("/" in op for op, _ in successors(0, 5))  # never divide by zero


def test_expand_keeps_rest_in_order_and_result_last():
    assert ("9-3=6", [4, 6]) in list(expand([4, 9, 3]))


def test_solver_first_and_all():
    first = solve([1, 2, 3, 4], 24)
    assert len(first) == 1
    every = solve([1, 2, 3, 4], 24, first=False)
    assert first[0] in every and len(every) > 1
    assert solve([1, 1], 100) == []


def test_shared_validation_set_reads_and_every_problem_is_solvable():
    probs = read_problems(VAL)
    assert len(probs) == 1000
    assert all(len(p.nums) == 4 and 10 <= p.target <= 100 for p in probs)
    assert all(solve(p.nums, p.target) for p in probs[:200])


def test_json_list_and_jsonl_read_the_same(tmp_path):
    probs = read_problems(VAL)[:5]
    (tmp_path / "a.json").write_text(json.dumps([p.to_dict() for p in probs]))
    assert [p.key for p in read_problems(tmp_path / "a.json")] == [p.key for p in probs]


def test_one_key_for_a_problem_a_record_and_a_file(tmp_path):
    p = Problem([9, 4, 3], 24, ["9-3=6", "4*6=24"])
    assert p.key == ((3, 4, 9), 24) == Problem([3, 9, 4], 24).key
    assert record_key({"nums": [9, 4, 3], "target": 24, "search_path": "..."}) == p.key
    assert record_key(json.loads(json.dumps(p.to_dict()))) == p.key
    for bad in ({"target": 24}, {"nums": [1, 2]}, {"nums": None, "target": 3}, {"nums": ["x"], "target": 3}):
        with pytest.raises((KeyError, TypeError, ValueError)):
            record_key(bad)
    probs = read_problems(VAL)[:5]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(q.to_dict()) + "\n" for q in probs[:3]))
    (tmp_path / "b.json").write_text(json.dumps([q.to_dict() for q in probs[2:]]))
    assert problem_keys([tmp_path / "a.jsonl", tmp_path / "b.json"]) == {q.key for q in probs}
    assert problem_keys([]) == set()
    (tmp_path / "bad.jsonl").write_text('{"nums": [1, 2], "target": 3}\n{"nums": [1], "target": 3}\n')
    with pytest.raises(UserError, match="bad.jsonl:2: "):
        problem_keys([tmp_path / "bad.jsonl"])


def test_generation_is_deterministic_across_worker_counts():
    one = [p.to_dict() for p in generate(300, seed=7, workers=1, chunk=50)]
    two = [p.to_dict() for p in generate(300, seed=7, workers=2, chunk=50)]
    assert one == two
    assert len({Problem(**p).key for p in one}) == 300


def test_generation_follows_options_and_excludes():
    task = TaskConfig(num_count=3, num_min=1, num_max=20, target_min=5, target_max=30)
    probs = list(generate(100, seed=1, task=task))
    assert all(len(p.nums) == 3 and all(1 <= x <= 20 for x in p.nums) and 5 <= p.target <= 30 for p in probs)
    assert all(solve(p.nums, p.target) for p in probs)
    excluded = {p.key for p in probs[:50]}
    again = list(generate(100, seed=1, task=task, exclude=excluded))
    assert not excluded & {p.key for p in again}


@pytest.mark.parametrize(
    "line,msg",
    [
        ('{"nums": [1, "x", 3, 4], "target": 10}', "non-integer"),
        ('{"nums": [1, -2, 3, 4], "target": 10}', "negative"),
        ('{"nums": [1, 2, 3, 4], "target": -1}', "out of range"),
        ('{"nums": [1, 2, 3, 4]', "invalid JSON"),
        ('[1, 2]', "not a JSON object"),
    ],
)
def test_bad_problem_lines_name_file_and_line(tmp_path, line, msg):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"nums": [1, 2, 3, 4], "target": 10}\n' + line + "\n")
    with pytest.raises(UserError, match=rf"bad.jsonl:2: .*{msg}"):
        read_problems(f)


@pytest.mark.parametrize("data,msg", [
    (b'{"nums": [1, 2], "target": 3}\n\xff\xfe\n', "2: not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "1: JSON nested too deeply"),
    (('{"nums": [1, %s], "target": 3}\n' % ("9" * 5000)).encode(), "1: invalid JSON: Exceeds the limit"),
])
def test_hostile_files_are_one_line_errors(tmp_path, data, msg):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(data)
    with pytest.raises(UserError, match=f"bad.jsonl:{msg}"):
        read_problems(f)


def test_task_settings_that_cannot_produce_problems_are_errors(monkeypatch):
    import apr.countdown as C

    with pytest.raises(UserError, match="no target in 100..100 is reachable"):
        list(generate(1, task=TaskConfig(num_count=2, num_min=1, num_max=1, target_min=100, target_max=100)))
    # reachable by the bound, but not by any draw: ends instead of looping forever
    monkeypatch.setattr(C, "REDRAWS_PER_TARGET", 50)
    with pytest.raises(UserError, match="produced no solvable problem"):
        list(generate(1, task=TaskConfig(num_count=2, num_min=5, num_max=5, target_min=11, target_max=19)))


def test_a_huge_count_streams(monkeypatch):
    g = generate(10**12, seed=0)  # plans bounded rounds: the first problems come at once
    assert [p.key for p in (next(g), next(g))] == [p.key for p in generate(2, seed=0)]


def test_a_torn_last_line_is_dropped_but_a_foreign_file_is_refused(tmp_path):
    from apr.io import read_appended

    f = tmp_path / "records.jsonl"
    f.write_text('{"index": 0}\n{"index": 1, "to')
    assert [r["index"] for _, r in read_appended(f)] == [0] and f.read_text() == '{"index": 0}\n'
    text = tmp_path / "notes.txt"
    text.write_text("my notes")
    with pytest.raises(UserError, match="notes.txt:1: unreadable record"):
        read_appended(text)
    assert text.read_text() == "my notes"
