"""Generated index.v1 stubs (built from proto/ by `make protos`)."""
