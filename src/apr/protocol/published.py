"""The published data's forms of a thread tree: a record's `trace_dict` (each segment's whole
context as `main_calls`, the children's as `sub_calls`) or its bare `search_path`."""

from __future__ import annotations

from apr.protocol.lines import JOIN_END
from apr.protocol.parse import spawn_start, split_prompt
from apr.protocol.tree import Thread


def thread_from_trace_dict(td: dict | str) -> Thread:
    """Rebuild a thread tree from a (published or ours) `trace_dict`.

    `main_calls[i]` is the whole context of segment i; the join text between calls is taken
    from the data itself so the rebuilt tree renders the record byte for byte.
    """
    if isinstance(td, str):
        td = {"main_calls": [td], "sub_calls": []}
    if not isinstance(td, dict):
        raise ValueError("trace_dict must be an object")
    calls = td.get("main_calls")
    subs = td.get("sub_calls") or []
    if not isinstance(calls, list) or not calls or not all(isinstance(c, str) for c in calls):
        raise ValueError("`main_calls` must be a non-empty list of strings")
    if not isinstance(subs, list):
        raise ValueError("`sub_calls` must be a list")
    prompt, first = split_prompt(calls[0])
    thread = Thread(prompt, [first])
    prev = calls[0]
    for k, call in enumerate(calls[1:]):
        cut = spawn_start(prev)
        if cut < 0:
            raise ValueError(f"main_calls[{k}] does not end in a spawn block")
        kept = prev[:cut]
        if not call.startswith(kept):
            raise ValueError(f"main_calls[{k + 1}] does not continue main_calls[{k}]")
        end = call.find(JOIN_END, cut)
        if end < 0:
            raise ValueError(f"main_calls[{k + 1}] has no join text")
        end += len(JOIN_END)
        thread.joins.append(call[cut:end])
        thread.segments.append(call[end:])
        prev = call
    for group in subs:
        if not isinstance(group, list):
            raise ValueError("each `sub_calls` entry must be a list")
        thread.children.append([thread_from_trace_dict(c) for c in group])
    while len(thread.children) < len(thread.joins):
        thread.children.append([])
    return thread


def thread_from_record(record: dict) -> Thread:
    """A demonstration record (ours or a published SFT record) as a thread tree."""
    td = record.get("trace_dict")
    if td is None:
        path = record.get("search_path")
        if not isinstance(path, str):
            raise ValueError("record has neither `trace_dict` nor `search_path`")
        return thread_from_trace_dict(path)
    return thread_from_trace_dict(td)
