"""Trace-replay load generator: traces -> shaped workload -> prompts -> open-loop gRPC replay.

Modules, in pipeline order: `traces` (Azure, Mooncake, synthetic Poisson/Gamma), `servegen`
(ServeGen per-client windows), `shaping` (window, rate, speedup, bounds, lengths), `prompts`
and `synth` (intent mix, token-exact prompts, shared Mooncake prefixes), `workload` (the
pipeline up to prompts), `replay` and `status` (grpc.aio client, Admin sampling), `report` and
`plots` (summary.json / summary.md / requests.jsonl, PNGs) and `cli` (`loadgen replay`).
Nothing is imported here, so `import flexmesh.loadgen.traces` stays light.
"""
