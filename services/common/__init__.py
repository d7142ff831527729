"""What every service shares: settings from the environment, auth, limits, logging, the gRPC server."""
