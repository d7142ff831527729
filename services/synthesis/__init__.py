"""Synthesis service: image + mask -> image with a synthetic lesion (REST on 3000, gRPC on 50051)."""
