"""The public gRPC gateway: search, similar items and catalog maintenance over Triton and the index."""
