"""The Python SDK (`submit`, `Run`) and the `schedctl` CLI."""
