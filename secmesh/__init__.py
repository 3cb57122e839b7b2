"""secmesh: SPIFFE identity, Envoy SDS v3 and Istio authorization in front of any service."""

__version__ = "0.1.0"
