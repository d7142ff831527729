"""lesionsynth services: thin BentoML + gRPC adapters over models/ (no ML logic here)."""
