"""Generated gRPC stubs of the contracts in ``proto/`` (see generate.py). Import the modules directly:
``from services.grpc_stubs import synthesis_pb2, synthesis_pb2_grpc``."""
