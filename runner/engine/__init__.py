"""Stage 3, the engine boundary: the only package of the runner that imports vLLM.

The job talks to an `Engine` (api.py): submit one request, consume a stream of events
(finished requests, progress counters), ask whether it died, kill it, shut it down, describe
its quantization. `vllm_engine.py` is vLLM's offline LLM behind it; `fake.py` is a test
double in its own process. vLLM is imported only when an engine starts: `--help`,
`--cfg job`, dry runs and cache hits never pay for it.
"""

from runner.engine.api import Engine, Event, Finished, Refused, Sample, Tokens
from runner.engine.args import engine_kwargs, engine_spec, environ, media_root
from runner.engine.slot import SLOT, EngineSlot

__all__ = ["SLOT", "Engine", "EngineSlot", "Event", "Finished", "Refused", "Sample", "Tokens",
           "engine_kwargs", "engine_spec", "environ", "media_root"]
