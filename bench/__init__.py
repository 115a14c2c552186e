"""syncar's benchmark: throughput, latency, CPU and memory across two daemons, next to raw broker pub/sub and
feathers-sync.

`python -m bench` runs it (see `python -m bench --help` and docs/benchmarks.md). The orchestrator (runner.py)
starts the brokers and the daemons; every load generator is a process of its own (worker.py for the Python ones,
node/feathers_bench.js for feathers-sync), so none of them shares an event loop with what it measures.
"""
