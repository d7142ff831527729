"""Classifier service: screening probability + decision (REST on 3001, gRPC on 50052)."""
