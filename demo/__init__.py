"""Seeded demo data (the synthetic catalog with its photos and labelled queries). Depends on the kernel
alone, so the main job, the benchmarks, the load generator's fallback vocabulary and the tests share it."""
