"""One reward process of `shared/tasks/reward_pool.py`: `python -m shared.tasks.reward_worker
<fd to read> <fd to write>`. Loads the reward functions by their import paths, then runs the
calls it is sent, one at a time, and sends each result back as soon as it has it."""

from __future__ import annotations

import asyncio
import inspect
import sys
import traceback
from multiprocessing.connection import Connection


def describe(err: BaseException) -> str:
    """`Type: message (file:line in function)` of the user's innermost frame."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}{where}"


def call(fn, kwargs: dict, loop: asyncio.AbstractEventLoop):
    result = fn(**kwargs)
    if inspect.isawaitable(result):  # async reward functions, as TRL accepts them
        result = loop.run_until_complete(result)
    return result


def main(read_fd: int, write_fd: int) -> None:
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    specs = inbox.recv()
    try:
        # optional dependency: its absence is handled below
        from shared.tasks.entrypoints import load_entry

        functions = [load_entry(spec, "task.rewards") for spec in specs]
    except BaseException as err:
        outbox.send(("error", describe(err)))
        return
    outbox.send(("ready", None))
    loop = asyncio.new_event_loop()
    while True:
        try:
            batch = inbox.recv()
        except EOFError:  # the driver closed the pool
            return
        for call_id, index, kwargs in batch:
            try:
                message = ("ok", call_id, call(functions[index], kwargs, loop))
            except BaseException as err:  # the user's bug: reported, the process serves on
                message = ("error", call_id, describe(err))
            try:
                outbox.send(message)
            except Exception as err:  # a result that cannot be pickled
                outbox.send(
                    (
                        "error",
                        call_id,
                        f"returned {type(message[2]).__name__}, which "
                        f"cannot be sent back ({describe(err)})",
                    )
                )


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
