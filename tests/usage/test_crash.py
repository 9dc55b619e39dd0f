"""A gateway killed with SIGKILL loses no record it had committed: the next start delivers them."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from llmproxy.usage.sink import UsageSink
from tests.usage.test_delivery import Receiver, until, usage_config

REPO = Path(__file__).parents[2]

CHILD = """
import asyncio, sys
from pathlib import Path
from llmproxy.config.model import Config
from llmproxy.usage.record import UsageRecord
from llmproxy.usage.sink import UsageSink

def committed(batch):
    sys.stdout.write("".join(f"{r.id}\\n" for r in batch))
    sys.stdout.flush()

async def main(base, url, count):
    hook = {"enabled": True, "url": url, "batch_interval": 0.02,
            "backoff_initial": 0.01, "backoff_max": 0.05}
    config = Config.model_validate({"backends": [{"url": "http://127.0.0.1:1"}],
                                    "usage_hook": hook})
    sink = UsageSink(config, Path(base), on_commit=committed)
    await sink.start()
    for n in range(count):
        sink.submit(UsageRecord(request_id=f"req-{n}", model="m", prompt_tokens=n,
                                completion_tokens=1, total_tokens=n + 1,
                                usage_source="backend"))
        await asyncio.sleep(0.004)
    print("finished", flush=True)
    await asyncio.sleep(60)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""

RECORD_ID = re.compile(rb"^[0-9a-f]{32}$", re.MULTILINE)


async def test_sigkill_mid_run_loses_no_committed_record(tmp_path: Path) -> None:
    """Every id the killed child saw committed is delivered by the next sink on the same outbox."""
    down = Receiver()
    await down.start()
    await down.stop()  # its port now refuses connections
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(tmp_path),
        down.url,
        "500",
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    assert child.stdout is not None
    committed: list[str] = []
    try:
        async with asyncio.timeout(30):
            while len(committed) < 150:
                line = (await child.stdout.readline()).strip()
                assert line, "the child exited before it was killed"
                assert line != b"finished", "the child finished before it was killed"
                committed.append(line.decode())
    finally:
        child.send_signal(signal.SIGKILL)
        rest = await child.stdout.read()
        await child.wait()
    committed += [m.decode() for m in RECORD_ID.findall(rest)]
    assert child.returncode == -signal.SIGKILL
    assert b"finished" not in rest

    receiver = Receiver()
    await receiver.start()
    sink = UsageSink(usage_config(receiver.url), tmp_path)
    await sink.start()
    assert sink.outbox_depth() >= len(committed)
    await until(lambda: sink.outbox_depth() == 0, within=20)
    lost = set(committed) - set(receiver.ids)
    assert not lost, f"{len(lost)} committed records were not delivered"
    assert len(set(receiver.ids)) == sink.delivered
    await sink.close()
    await receiver.stop()
