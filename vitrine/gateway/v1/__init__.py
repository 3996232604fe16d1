"""Generated gateway.v1 stubs (built from proto/ by `make protos`)."""
