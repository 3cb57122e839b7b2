"""`secmesh demo`: the whole product on loopback, in one unprivileged command.

The demo starts real processes (CA, one agent per "pod", a backend app, the sidecars) in a
temporary directory, drives real clients through them and checks every claim it prints. The
modules split the work by responsibility:

- `tokens`     mint Kubernetes-style service-account tokens and their JWKS (the API server's job)
- `layout`     the temporary directory, ports and socket paths of one run
- `configs`    the sidecar configs, the Istio policies and the command lines of every process
- `procs`      start processes by argv, poll readiness, end each one by PID
- `netns`      optional `--netns`: each pod in its own network namespace joined by a veth pair
- `bringup`    create the CA, start everything, wait until each process is ready
- `backend`    the small asyncio HTTP app behind the orders sidecar (`python -m secmesh.demo.backend`)
- `probes`     clients: curl or Python HTTP, plaintext and mTLS probes, metric scraping
- `steps`      the allowed / forbidden-path / denied / plaintext checks, each returning a `StepResult`
- `rotation`   the request loop that runs across a certificate rotation
- `summary`    the rich table and the JSON document
- `runner`     orchestration: setup → steps → summary → clean-up (also on Ctrl-C)
"""
