"""`minillm serve`: an OpenAI-compatible server in three processes.

- `api.py`: the API process, FastAPI + uvicorn on asyncio: routes, validation, SSE streaming.
- `engine_client.py`: the API process's handle on the other two: start, feed, watch, stop.
- `tokenizer_worker.py`: prompts and chat templates → checked token ids.
- `scheduler_process.py`: rank 0 of the engine: steps `LLMEngine`, streams the deltas back.
- `messages.py`: every message between them, typed, msgpack over ZMQ.
- `protocol.py`: the OpenAI request and response shapes. `metrics.py`: `/metrics`.
- `launcher.py`: `ServerProcess`, `minillm serve` as a child process (notebooks, benchmarks,
  tests). `bench.py`: `minillm bench serve`, the online benchmark.

Nothing is imported here, so `import minillm.server.bench` needs neither FastAPI nor torch.
"""
