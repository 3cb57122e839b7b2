"""Istio security policies (AuthorizationPolicy, PeerAuthentication, RequestAuthentication), pure.

Load with `load.load_policies`, compile per workload with `engine.Engine`, decide with
`Engine.decide_connection` / `Engine.decide_request`. No asyncio, no grpc, no I/O in the
engine (files are read by `load`/`yamlsrc`, JWKS fetched by `jwks_http`).
"""
