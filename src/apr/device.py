"""The machine a command runs on: the device it names, checked once before anything is
placed on it (`resolve_device`, shared by the engine and the trainers), and the memory free
there (`check_memory`), so a request the machine cannot hold is one line, not a traceback
or a process killed half-way.

torch is imported inside the functions that need it: `is_device_name` and the memory of
the host are read by commands that must start fast.
"""

from __future__ import annotations

import os
import re

from apr.errors import UserError

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"


def is_device_name(device: object) -> bool:
    """A device name of the form the commands take (auto, cpu, cuda, cuda:N), checked without
    asking the machine (options and config files are checked before torch loads)."""
    return isinstance(device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", device) is not None


def resolve_device(device="auto"):
    """The torch.device `device` names (auto: a GPU when there is one), checked before anything
    is placed on it: a name torch does not know, CUDA on a machine without it or a GPU index the
    machine lacks is a one-line UserError, not a traceback from deep inside a load."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):  # the engine and trainers run (and are tested) on these only
        raise UserError(f"unknown device {str(device)!r} ({DEVICE_NAMES})")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UserError(f"device {str(device)!r}: CUDA is not available on this machine (use cpu or auto)")
        if dev.index is not None and dev.index >= n:
            raise UserError(f"device {str(device)!r}: this machine has {n} CUDA device{'s' * (n > 1)} "
                            f"(cuda:0..cuda:{n - 1})")
    return dev


def free_memory(device=None) -> int | None:
    """Bytes free for new tensors: on a CUDA device what the driver reports free, else the
    host's available memory (MemAvailable); None when the machine does not say."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need: int, what: str, device=None, fields: tuple[str, ...] = ()) -> None:
    """Refuse, before the work starts, `what` needing about `need` bytes where fewer are free."""
    from apr.io import human_bytes

    free = free_memory(device)
    if free is not None and need > free:
        where = f"{device}" if device is not None and str(device).startswith("cuda") else "this machine"
        raise UserError(f"{what} needs about {human_bytes(need)} of memory; {where} has {human_bytes(free)} free",
                        fields=fields)
