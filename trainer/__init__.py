"""The training engine (Module, DataModule, Trainer). Imports torch only, never grpc.

The engine itself lands with issue 3; until then this package holds nothing, so that
the namespace and packaging are fixed from the start.
"""
