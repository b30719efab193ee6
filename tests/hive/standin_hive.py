"""A hive process whose workers are stand-ins: ``python standin_hive.py QUEEN_URL STORE STATE``.

Used to SIGKILL and SIGTERM a real hive process without waiting for a real model to load.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import trio

from rbee.config import HiveConfig
from rbee.hive.daemon import run_hive
from tests.hive.fakes import STANDIN_COMMAND

if __name__ == "__main__":
    queen_url, store, state = sys.argv[1:4]
    config = HiveConfig(port=0, name="standin-hive", queen_url=queen_url, worker_stop_grace_s=2.0)
    trio.run(partial(run_hive, config, Path(store), Path(state), worker_command=STANDIN_COMMAND))
