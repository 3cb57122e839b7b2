"""Pure identity code shared by the CA, the agent and the sidecar: no asyncio, no grpc."""
