"""Stage 3, the engine: planned requests in, finished outputs and progress events out. The
only package of the runner that imports vLLM (runner/bundled/ imports torch, to build the
tiny models).

The job talks to an `Engine` (api.py): submit one request, consume a stream of events
(finished requests, progress counters), ask whether it died, kill it, shut it down, describe
its quantization. Three implement it: `vllm_engine.py` (vLLM's offline engine, stepped in
this process), `client.py` (an OpenAI-compatible vLLM server, engine.url or engine=server)
and `fake.py` (a test double in its own process). `slot.py` keeps one engine across sweep
points, `server.py` is `python -m runner.serve`. vLLM is imported only when an engine starts:
`--help`, `--cfg job`, dry runs and cache hits never pay for it.
"""

from runner.engine.api import Engine, Event, Finished, Refused, Sample, Tokens
from runner.engine.args import engine_kwargs, engine_spec, environ, media_root
from runner.engine.slot import SLOT, EngineSlot

__all__ = ["SLOT", "Engine", "EngineSlot", "Event", "Finished", "Refused", "Sample", "Tokens",
           "engine_kwargs", "engine_spec", "environ", "media_root"]
