"""FAISS collections over gRPC: filtered batch search over durable, named collections."""
