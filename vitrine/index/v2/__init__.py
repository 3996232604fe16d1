"""Generated index.v2 stubs (built from proto/ by `make protos`)."""
