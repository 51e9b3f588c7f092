"""The published trace language: one package for the solvers, the data, the runtime and the checker.

- lines.py: the builders of each kind of line, spawn blocks and join text, and the patterns
  that read lines;
- parse.py: numbers, node states, a parent's spawn block, a thread's start state;
- results.py: a thread's result under the `official` and `goal-line` readings, and what a
  join text passed on;
- tree.py: `Thread`, the one thread-tree type (solver demonstrations, runtime threads,
  `Record.threads`), with its text, calls, training strings and sequential tokens;
- published.py: the published data's forms of a tree (`trace_dict`, `search_path`);
- joins.py: the join rules by name (`JOIN_RULES`), imported as `apr.protocol.joins`.

docs/FORMATS.md describes the language in full.
"""

from apr.protocol.lines import (
    EXPLORE_RE, GENERATED_RE, GOAL_RE, GOAL_REACHED, JOIN_END, JOIN_START, MOVING_RE, NO_SOLUTION, QUOTED_OP_RE,
    SPAWN_END, SPAWN_LINE_RE, SPAWN_START, STATE_RE, TAG_RE, ChildRequest, ChildResult, apr_prompt, child_id,
    child_prompt, explore_line, fmt_list, fmt_ops, generated_line, goal_line, join_text, moving_line, parent_id,
    solution_path, sos_prompt, spawn_block, state_line,
)
from apr.protocol.parse import (
    Move, NodeState, is_goal_line, node_moves, node_states, parse_list, parse_spawn, spawn_start, split_prompt, start_state,
)
from apr.protocol.published import thread_from_record, thread_from_trace_dict
from apr.protocol.results import goal_line_result, join_results, official_result
from apr.protocol.tree import Thread, TrainingString

__all__ = [
    "EXPLORE_RE", "GENERATED_RE", "GOAL_RE", "GOAL_REACHED", "JOIN_END", "JOIN_START", "MOVING_RE", "NO_SOLUTION",
    "QUOTED_OP_RE", "SPAWN_END", "SPAWN_LINE_RE", "SPAWN_START", "STATE_RE", "TAG_RE", "ChildRequest", "ChildResult",
    "apr_prompt", "child_id", "child_prompt", "explore_line", "fmt_list", "fmt_ops", "generated_line", "goal_line",
    "join_text", "moving_line", "parent_id", "solution_path", "sos_prompt", "spawn_block", "state_line",
    "Move", "NodeState", "is_goal_line", "node_moves", "node_states", "parse_list", "parse_spawn", "spawn_start", "split_prompt",
    "start_state", "thread_from_record", "thread_from_trace_dict", "goal_line_result", "join_results",
    "official_result", "Thread", "TrainingString",
]
