"""weft-executor: claims ready steps from etcd and runs them through a runtime.

Modules, in the order a step meets them: `executor` (the process: registration, loops,
dispatch), `scheduler` (which ready steps are unclaimed), `steps` (one claimed step: DNA,
cache, attempts, commit), `progress` (run-level transitions in etcd), `runtime` (how an
attempt runs: `runtime.local` processes, the Kubernetes runtime), `service`
(ExecutorService: live logs), `registration` (lease and record), `config` (flags).
Everything an executor knows is derived from etcd, so any number of them can run.
"""
